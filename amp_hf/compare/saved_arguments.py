"""Reading a few fields of a `training_args.bin` without running anything in it.

The Trainer saves its TrainingArguments with `torch.save`, a pickle, and unpickling runs whatever callables the file
names: `torch.load(weights_only=False)` on a run folder compare did not write would execute its code. Here the
pickle is read by an unpickler whose every global is an inert stand-in (`_Inert`): nothing is imported, called or
constructed but plain data (and the builtin containers), and the arguments object comes back as the dict of its
fields, from which only the plain values asked for are kept. `torch.load(weights_only=True)` would refuse the file
outright (TrainingArguments, its enums and a user's own subclass are not weights), and an allow-list of classes would
have to import the user's subclass from its module to accept it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SAFE_GLOBALS = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): dict,
}
"""Globals that only build containers of the values inside them (protocol 2 pickles name them `__builtin__.x`)."""


class _Inert:
    """What every other global of the pickle becomes: calling or building it only records its arguments and state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        return SAFE_GLOBALS.get((module, name)) or type(name, (_Inert,), {"__module__": module})

    def persistent_load(self, pid: Any) -> None:
        return None  # a tensor's storage: never needed for the fields read here


def _plain(value: Any) -> Any:
    """A field's value as JSON would hold it: an enum member (an inert object built from its value) by its value."""
    if isinstance(value, _Inert):
        return value.args[0] if len(value.args) == 1 and isinstance(value.args[0], (str, int, float)) else None
    return value if isinstance(value, (str, int, float, bool, type(None))) else None


def read_saved_arguments(path: str | Path, names: Sequence[str]) -> dict[str, Any] | None:
    """{name: value} of the fields `names` in the TrainingArguments saved at `path` (torch.save's zip format), None when
    the file cannot be read that way. A field missing from the file is None."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            with archive.open(pickled) as source:
                arguments = _InertUnpickler(source).load()
    except Exception:  # not a zip, no pickle in it, a pickle this reader cannot follow: not readable safely
        return None
    state = getattr(arguments, "state", None)
    if isinstance(state, tuple) and state and isinstance(state[0], dict):
        state = state[0]  # (dict, slots) state
    if not isinstance(state, dict):
        return None
    return {name: _plain(state.get(name)) for name in names}
