"""What compare compares: ERM plus the user's candidates, each a preset name or a JSON object of `amp_*` arguments,
validated before anything runs and turned into the flags appended to the user's command."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..config import PATTERN_FIELDS, AMPConfig
from ..presets import ERM, SCALAR_ARGUMENTS, find_preset, optimizer_family, resolve
from ..presets import names as preset_names
from .script_flags import flag_words

ERM_NAME = "erm"
"""Plain ERM's candidate name; it is always compared (with `--amp_inner_steps 0`, the plain Trainer bit for bit)."""

AMP_ARGUMENTS: tuple[str, ...] = (*SCALAR_ARGUMENTS, *(f"amp_{p}" for p in PATTERN_FIELDS), "amp_preset")
"""Every argument a JSON candidate may set."""
CANDIDATE_SETTINGS = frozenset({*SCALAR_ARGUMENTS, "amp_preset"})
"""The arguments the candidates set, which the user's command must leave to them (the patterns may stay in it)."""

_SHORT = {
    "amp_epsilon": "eps",
    "amp_inner_steps": "k",
    "amp_inner_lr": "lr",
    "amp_norm": "",
    "amp_interval": "every",
    "amp_start_step": "start",
    "amp_ascent_fraction": "f",
    "amp_preset": "",
    "amp_include": "inc",
    "amp_exclude": "exc",
    "amp_direction": "",
}
"""Slug parts: `{"amp_norm": "global", "amp_epsilon": 0.05}` is named `global-eps0.05`."""


MAX_SEED = 2**32 - 1
"""The largest seed numpy accepts (`transformers.set_seed` passes the seed to `np.random.seed`), the smallest is 0."""


class CompareError(ValueError):
    """Bad input to compare (a candidate, the command, a seed, a metric): the message names it and what is allowed."""


@dataclass(frozen=True)
class Candidate:
    """One compared setting: its name (a run folder's name), and the `amp_*` arguments its runs get."""

    name: str
    arguments: Mapping[str, Any]
    """{"amp_preset": "cnn_long_noisy"}, {"amp_inner_steps": 0} (ERM) or the JSON object's amp_* arguments."""
    merged: tuple[Candidate, ...] = field(default=(), compare=False)
    """The candidates given with the same resolved settings, run and compared as this one (`merge_notes` says so)."""

    def flags(self) -> list[str]:
        """The command-line flags of `arguments`, as HfArgumentParser reads them (a list is separate words)."""
        out: list[str] = []
        for key, value in self.arguments.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            out += [f"--{key}", *(str(v) for v in values)]
        return out

    @property
    def is_erm(self) -> bool:
        return self.name == ERM_NAME

    @property
    def config(self) -> AMPConfig:
        """The settings its runs train with (the patterns the candidate does not set are the command's)."""
        return resolved(self.arguments)

    def settings_key(self) -> tuple | None:
        """What decides its runs' training, for finding duplicates: None for plain ERM (AMP off, whatever else is
        set), else every resolved setting and the patterns it sets (those it leaves to the command are left out)."""
        return tuple(self.expected_settings().items()) if self.config.enabled else None

    def describe(self) -> str:
        """Its name, with its arguments when the name does not say them (a JSON candidate)."""
        if set(self.arguments) == {"amp_preset"} and self.arguments["amp_preset"] == self.name:
            return self.name
        return f"{self.name} {json.dumps(dict(self.arguments))}"

    def expected_settings(self) -> dict[str, Any]:
        """What its runs' recorded AMPConfig must show (AMPConfig's names): every setting when AMP is on (the patterns
        only where the candidate sets them: otherwise they are the command's); when it is off, what turns it off."""
        config = self.config
        if not config.enabled:
            return {"inner_steps": 0} if config.inner_steps == 0 else {"epsilon": 0.0}
        given = {key.removeprefix("amp_") for key in self.arguments}
        return {
            f.name: getattr(config, f.name) for f in fields(config) if f.name not in PATTERN_FIELDS or f.name in given
        }


ERM_CANDIDATE = Candidate(ERM_NAME, dict(ERM))


def _check_arguments(arguments: Mapping[str, Any], where: str) -> None:
    """Refuses keys that are not amp_* arguments and values AMPConfig refuses, naming them."""
    unknown = [key for key in arguments if key not in AMP_ARGUMENTS]
    if unknown:
        raise CompareError(
            f"candidate {where}: {', '.join(map(repr, unknown))} is not an amp_* argument; a JSON candidate sets "
            f"only {', '.join(AMP_ARGUMENTS)}"
        )
    try:
        resolved(arguments)
    except (ValueError, TypeError) as error:
        raise CompareError(f"candidate {where}: {error}") from None


def resolved(arguments: Mapping[str, Any]) -> AMPConfig:
    """The settings a candidate's `amp_*` arguments give (its `amp_preset`, if any, under the others), by the one
    resolver the training arguments use."""
    explicit = {key: value for key, value in arguments.items() if key != "amp_preset"}
    return resolve(arguments.get("amp_preset"), explicit)


def _slug(arguments: Mapping[str, Any]) -> str:
    parts = []
    for key, value in arguments.items():
        text = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(_SHORT.get(key, key.removeprefix("amp_")) + text)
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", "-".join(parts)) or "amp-defaults"


def _check_name(name: str) -> None:
    """A candidate's name is one folder inside the runs folder (runs/<name>): never `.`, `..` or a path."""
    if not re.fullmatch(r"[A-Za-z0-9._@+-]+", name) or not name.strip("."):
        raise CompareError(
            f"candidate name {name!r}: use letters, digits and . _ @ + -, and not only dots (it names the folder "
            "runs/<name>, which '.' or '..' would put outside the runs folder)"
        )


def _check_patterns(arguments: Mapping[str, Any], where: str) -> None:
    """Refuses pattern lists the command line cannot carry: an empty one (the flag without words, which the script's
    parser refuses after the runs start) and a pattern starting with '-' (read as a flag)."""
    for key in (f"amp_{p}" for p in PATTERN_FIELDS):
        value = arguments.get(key)
        if isinstance(value, (list, tuple)) and not value:
            raise CompareError(
                f"candidate {where}: {key} is an empty list, the flag --{key} without a pattern, which the script's "
                "parser refuses; leave the key out for no patterns, or list at least one regular expression"
            )
        patterns = [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []
        dashed = [p for p in patterns if isinstance(p, str) and p.startswith("-")]
        if dashed:
            raise CompareError(
                f"candidate {where}: {key} entry {dashed[0]!r} starts with '-', which the script's parser reads as a "
                "flag; write the pattern without a leading '-' (e.g. '[-]' for a literal dash)"
            )


def parse_candidate(spec: str | Mapping[str, Any]) -> Candidate:
    """A candidate from a preset name ("cnn_long_noisy", "name@1"), "erm", a JSON object of amp_* arguments (a string
    or a mapping), or "name=JSON" to name a JSON candidate. A CompareError names what is wrong."""
    name: str | None = None
    if isinstance(spec, Mapping):
        arguments = dict(spec)
    elif isinstance(spec, str):
        text = spec.strip()
        head, eq, tail = text.partition("=")
        if eq and tail.lstrip().startswith("{") and not head.lstrip().startswith("{"):
            name, text = head.strip(), tail.strip()
        if not text.startswith("{"):
            if text == ERM_NAME:
                return ERM_CANDIDATE
            try:
                find_preset(text)
            except ValueError:
                raise CompareError(
                    f"candidate {text!r} is neither a preset ({', '.join(preset_names())}, or name@version), "
                    f"{ERM_NAME!r}, nor a JSON object of amp_* arguments"
                ) from None
            return Candidate(text, {"amp_preset": text})
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError as error:
            raise CompareError(f"candidate {spec!r} is not valid JSON: {error}") from None
        if not isinstance(arguments, dict):
            raise CompareError(f"candidate {spec!r} must be a JSON object of amp_* arguments")
    else:
        raise CompareError(f"a candidate is a preset name or a mapping of amp_* arguments, got {spec!r}")
    if not arguments:
        raise CompareError("an empty candidate {} is AMP's reference defaults: name them as the preset 'reference'")
    _check_arguments(arguments, repr(spec))
    _check_patterns(arguments, repr(spec))
    name = name or _slug(arguments)
    _check_name(name)
    return Candidate(name, arguments)


def parse_candidates(specs: Sequence[str | Mapping[str, Any]]) -> list[Candidate]:
    """ERM first, then each distinct setting once: a candidate whose resolved settings equal an earlier one's (the same
    JSON in another key order, a preset spelled twice, a JSON object equal to a preset) is merged into it, and one that
    turns AMP off (the ERM presets finetune, cnn, ...) into ERM, so nothing trains twice or adds a comparison to the
    family; `merge_notes` says which were merged. Two different settings under one name are refused."""
    out = [ERM_CANDIDATE]
    for spec in specs:
        candidate = parse_candidate(spec)
        key = candidate.settings_key()
        clash = next((c for c in out if c.name == candidate.name), None)
        if clash is not None and clash.settings_key() != key:
            raise CompareError(
                f"two candidates are named {candidate.name!r} ({dict(clash.arguments)} and "
                f"{dict(candidate.arguments)}): name one with name=JSON"
            )
        same = next((i for i, c in enumerate(out) if c.settings_key() == key), None)
        if same is None:
            out.append(candidate)
        elif out[same].name != candidate.name and candidate.name not in {m.name for m in out[same].merged}:
            out[same] = replace(out[same], merged=(*out[same].merged, candidate))
    return out


def merge_notes(candidates: Sequence[Candidate]) -> list[str]:
    """One line per candidate that others were merged into (parse_candidates), for the report and the console."""
    notes = []
    for candidate in candidates:
        if not candidate.merged:
            continue
        names = ", ".join(c.describe() for c in candidate.merged)
        if candidate.settings_key() is None:
            notes.append(f"{names}: plain ERM (AMP off), so not trained again: compared as {candidate.name}")
        else:
            notes.append(
                f"{names}: the same settings as {candidate.describe()}, trained and compared once, as {candidate.name}"
            )
    return notes


def outside_regime(candidate: Candidate, optimizer_name: str | None) -> str | None:
    """A short note when the candidate's preset was chosen with another optimizer family than its runs used ("adam" vs
    "sgd": `presets.optimizer_family`), for the report to print beside the verdict: a preset's verdict says nothing
    about a regime it was not chosen for. None when it is inside, when the candidate has no preset, the preset names
    no regime (a method: sam, asam), AMP is off, or the runs' optimizer is unknown (`RunRecord.optimizer` None)."""
    key = candidate.arguments.get("amp_preset")
    if key is None or optimizer_name is None or not candidate.config.enabled:
        return None
    preset = find_preset(key)
    if preset.optimizer is None or optimizer_family(optimizer_name) == optimizer_family(preset.optimizer):
        return None
    named = candidate.name if candidate.name == key else f"{candidate.name} (preset {preset.key})"
    return f"{named} was chosen with {preset.regime}; this run used {optimizer_name}"


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds as ints, refusing none, duplicates, non-integers (a seed is a pairing: each is run once) and seeds
    numpy refuses (below 0, above 2**32 - 1)."""
    if not seeds:
        raise CompareError("--seeds: give at least one seed (two or more for a confidence interval)")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise CompareError(f"--seeds must be integers, got {list(seeds)!r}")
    outside = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if outside:
        raise CompareError(
            f"--seeds: {', '.join(map(str, outside))} is outside 0 to 2**32 - 1: the Trainer seeds numpy with it, "
            "which refuses a negative seed (or a larger one) only once the run has started"
        )
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise CompareError(f"--seeds lists {', '.join(map(str, repeated))} more than once")
    return list(seeds)


def amp_flags_in(command: Sequence[str]) -> dict[str, str]:
    """The words of `command` that the script's parser would read as an argument the candidates set, each with that
    argument (`{"--amp_eps": "amp_epsilon", "--amp-preset=sam": "amp_preset"}`): any spelling argparse accepts (the
    dashed one, an abbreviation, `--flag=value`; `script_flags` reads them). `--amp_include` / `--amp_exclude` are the
    command's to set."""
    return {word: name for word, name in flag_words(command).items() if name in CANDIDATE_SETTINGS}


def check_amp_flags(command: Sequence[str]) -> None:
    """Refuses a command that sets what the candidates set, in any spelling its parser accepts: it would silently
    change every candidate (argparse keeps the last value, but a preset in the command changes what the candidates'
    explicit values leave out), and the report would label the runs wrongly."""
    found = amp_flags_in(command)
    if found:
        words = ", ".join(
            word if word.split("=")[0] == f"--{name}" else f"{word} (= --{name})" for word, name in found.items()
        )
        raise CompareError(
            f"the command sets {words}, which the candidates set: put such settings in a JSON candidate "
            "(e.g. '{\"amp_epsilon\": 0.1}'); only the parameter patterns (--amp_include / --amp_exclude) may stay"
        )
