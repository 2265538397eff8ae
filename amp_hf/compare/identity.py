"""What identifies a run: everything that determines its result, so that a finished run is reused only where a new
one would give the same numbers. compare records it in each run's done-marker and refuses a finished run whose
identity differs (`changes` names what changed); the benchmark studies' run cache keys its records by it
(`benchmarks/runner.py`).

- **The code that trains it**: the content of every file the command names that is code or configuration (the
  script, an `accelerate launch` script, a `--deepspeed ds.json`, the module of `-m module`), resolved against the
  working directory; for `compare(train_fn)`, the source of `train_fn` (its code object where the source is not
  available). What that code imports is not covered, except amp_hf: a helper module next to the script that changes
  is not seen (docs/compare.md says so).
- **Where it runs**: the working directory (the same relative command in another folder reads other files).
- **The libraries**: amp_hf (its version and a hash of the source a run executes, which changes between releases'
  commits; compare's reading and reporting code is left out, so a fixed report reuses the runs) and the torch,
  transformers and accelerate versions.

Data files named in the command are hashed as well when they have a configuration suffix (`.json`, `.yaml`, ...) and
are at most LARGEST_HASHED bytes; larger ones are identified by their size.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "accelerate")
"""Besides amp_hf, the libraries whose version is part of a run's identity."""
CONTENT_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh")
"""Files named in a command whose content is part of a run's identity: code and configuration."""
LARGEST_HASHED = 256 * 2**20
"""Larger files (a data set given as .json) are identified by their size: hashing gigabytes at every start costs more
than it is worth for a file that is not code."""


# ------------------------------------------------------------------------------------------------- digests
def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's content (16 hex digits), read in blocks; `size <n>` for a file over LARGEST_HASHED."""
    path = Path(path)
    size = path.stat().st_size
    if size > LARGEST_HASHED:
        return f"size {size}"
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def files_digest(files: Iterable[str | Path], base: str | Path) -> str:
    """One digest of several files: their names relative to `base` and their contents (12 hex digits)."""
    base = Path(base)
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def text_digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- libraries
def _version(name: str) -> str:
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version  # the imported one is the one that runs in this process
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def training_code(package: Path) -> list[Path]:
    """amp_hf's files that a run executes: every .py file but compare's own, which reads runs and reports on them
    (a fixed report must not make finished runs stale), except its recorder, which runs inside each run."""
    compare = package / "compare"
    return [p for p in package.rglob("*.py") if compare not in p.parents or p.name == "recording.py"]


def library_versions() -> dict[str, str]:
    """{"amp_hf": "<version> (source <hash>)", "torch": ..., "transformers": ..., "accelerate": ...}. amp_hf's hash is
    of the imported package's training code (`training_code`): a development checkout changes its code without
    changing its version."""
    import amp_hf

    package = Path(amp_hf.__file__).resolve().parent
    versions = {"amp_hf": f"{amp_hf.__version__} (source {files_digest(training_code(package), package)})"}
    versions.update({name: _version(name) for name in LIBRARIES})
    return versions


# ------------------------------------------------------------------------------------------------ commands
def _module_file(name: str, roots: Sequence[Path]) -> Path | None:
    """The file `python -m name` runs, found without importing anything: <root>/a/b.py or <root>/a/b/__main__.py."""
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__main__.py"):
            if candidate.is_file():
                return candidate
    return None


def _shown(path: Path, cwd: Path) -> str:
    """A file's name as messages show it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def command_files(command: Sequence[str], cwd: str | Path) -> dict[str, str]:
    """{file: digest} of the files `command` names that determine its runs: every word (or `--flag=value`'s value)
    that names an existing code or configuration file, resolved against `cwd`, and the module after each `-m`
    (looked for in `cwd`, then on this interpreter's path, as `python -m` does)."""
    cwd = Path(cwd).resolve()
    roots = [cwd, *(Path(p).resolve() for p in sys.path if p and Path(p).is_dir())]
    files: dict[str, str] = {}
    for i, word in enumerate(command):
        if i > 0 and command[i - 1] == "-m":
            found = _module_file(word, roots)
        else:
            value = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
            path = cwd / value
            found = path.resolve() if value.endswith(CONTENT_SUFFIXES) and path.is_file() else None
        if found is not None:
            files[_shown(found, cwd)] = file_digest(found)
    return files


def command_identity(command: Sequence[str], cwd: str | Path | None = None) -> dict[str, Any]:
    """The identity of runs of `command` started in `cwd` (default: the current directory)."""
    cwd = Path(cwd or os.getcwd()).resolve()
    return {
        "command": list(command),
        "cwd": str(cwd),
        "files": command_files(command, cwd),
        "versions": library_versions(),
    }


# ----------------------------------------------------------------------------------------------- functions
def _code_bytes(code: types.CodeType) -> bytes:
    """A code object's instructions, names and constants, nested functions' included (no source needed)."""
    parts = [code.co_code, repr(code.co_names).encode(), repr(code.co_varnames).encode()]
    for constant in code.co_consts:
        parts.append(_code_bytes(constant) if isinstance(constant, types.CodeType) else repr(constant).encode())
    return b"\0".join(parts)


def function_source(fn: Callable[..., Any]) -> str:
    """A digest of what `fn` runs: its source (`inspect.getsource`, which also works for a notebook cell's function);
    its code object's bytes where there is no source (a function made by exec); a partial's function and arguments;
    a callable object's class."""
    target = inspect.unwrap(fn)
    if isinstance(target, functools.partial):
        return text_digest(f"{function_source(target.func)} {target.args!r} {target.keywords!r}")
    if not (inspect.isroutine(target) or inspect.isclass(target)):
        target = type(target)
    try:
        return text_digest(inspect.getsource(target))
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        return text_digest(_code_bytes(code)) if isinstance(code, types.CodeType) else text_digest(repr(target))


def function_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def function_identity(fn: Callable[..., Any], cwd: str | Path | None = None) -> dict[str, Any]:
    """The identity of runs of `compare(fn, ...)` in `cwd` (a relative path inside fn reads from there)."""
    return {
        "train_fn": function_name(fn),
        "source": function_source(fn),
        "cwd": str(Path(cwd or os.getcwd()).resolve()),
        "versions": library_versions(),
    }


def per_run(base: Mapping[str, Any]) -> Callable[[Any, int], dict[str, Any]]:
    """(candidate, seed) → one run's identity: `base` (`command_identity` or `function_identity`, computed once per
    comparison) with the candidate's name and settings and the seed."""

    def of(candidate: Any, seed: int) -> dict[str, Any]:
        return {**base, "candidate": candidate.name, "settings": dict(candidate.arguments), "seed": seed}

    return of


# ------------------------------------------------------------------------------------------------- changes
def _mapping_changes(what: str, recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    out = []
    for name in sorted(set(recorded) | set(now)):
        if name not in now:
            out.append(f"{name} is no longer {what}")
        elif name not in recorded:
            out.append(f"{name} was not {what}")
        elif recorded[name] != now[name]:
            out.append(f"{name} changed ({recorded[name]} → {now[name]})" if what == "a library" else f"{name} changed")
    return out


def changes(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between a finished run's recorded identity and the identity a run would have now, in words
    ("train.py changed", "transformers changed (5.1.0 → 5.2.0)"), for every key of `now`; empty when nothing does."""
    unrecorded = [key for key in now if key not in recorded]
    out = [f"it was recorded without its {', '.join(unrecorded)} (by an older amp_hf)"] if unrecorded else []
    for key, value in now.items():
        old = recorded.get(key)
        if key not in recorded:
            continue
        if key == "files":
            out += _mapping_changes("part of the command", old or {}, value)
        elif key == "versions":
            out += _mapping_changes("a library", old or {}, value)
        elif key == "source":
            if old != value:
                out.append("the train function's source changed")
        elif key == "cwd":
            if old != value:
                out.append(f"the working directory changed ({old} → {value})")
        elif _canonical(old) != _canonical(value):
            shown = (lambda v: " ".join(map(str, v))) if key == "command" else repr
            out.append(f"the {key} changed ({shown(old)} → {shown(value)})")
    return out


def _canonical(value: Any) -> Any:
    """Tuples as lists and mapping keys in order, as the value reads back from a JSON file."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda item: str(item[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value
