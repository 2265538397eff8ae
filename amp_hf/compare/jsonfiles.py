"""compare's JSON files, written and read in one way.

Written **atomically** (a temporary file in the same folder, then `os.replace`): a reader, or a comparison killed
mid-write, never sees half a file. Written **strictly** (RFC 8259): Python's json module would write a diverged run's
NaN as the bare token `NaN`, which other JSON readers refuse; here a non-finite number is written as the string
"NaN", "Infinity" or "-Infinity" (JavaScript's and Python's own names for them), and `number` reads it back.

Read **tolerantly**: the Trainer's own files (`trainer_state.json`, `*_results.json`) hold bare NaN / Infinity
tokens for a diverged run; `read_json` accepts them as floats, and `number` accepts both spellings.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
"""How a non-finite number is spelled in a strict file (the names the NaN / Infinity tokens have elsewhere)."""


def strict(value: Any) -> Any:
    """`value` with every non-finite float replaced by its name in NON_FINITE (lists, tuples and dicts walked)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Strict JSON text of `value` (non-finite numbers by name; other objects, e.g. a Path or an enum, as str)."""
    return json.dumps(strict(value), indent=2, sort_keys=sort_keys, allow_nan=False, default=str) + "\n"


def write_json(path: str | Path, value: Any, *, sort_keys: bool = False) -> None:
    """Writes `value` to `path` strictly and atomically, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(value, sort_keys=sort_keys)  # before the temporary file: a value that cannot be written leaves none
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> Any:
    """The JSON value in `path` (bare NaN / Infinity tokens accepted as floats), or None when the file is missing or
    is not JSON (a file another program was killed while writing)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def number(value: Any) -> float | None:
    """A recorded number as a float (NaN and ±inf included, in either spelling); None for anything else (a missing
    value, a bool, a string that is not a non-finite number's name)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    return None
