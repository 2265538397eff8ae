"""The user's command read as its script's parser reads it, before anything runs: which argument each word sets and
with which values.

The script builds `HfArgumentParser(AMPTrainingArguments)` (plus arguments of its own), so the reading uses that
parser's options (the dashed aliases `--amp-epsilon`, the `--no_*` switches) and argparse's own rules: an unambiguous
prefix is the option (`--amp_eps`), `--flag=value` is the flag and its value, the last occurrence wins. A prefix that
is ambiguous here is never one of these options in the script: its larger parser refuses it, or means an exact option
of its own by it. Words the parser does not know (the script's own flags, a launcher's) are left out.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import NoReturn


class _Unresolved(Exception):
    """An option argparse cannot resolve to one argument (an ambiguous abbreviation)."""


class _Reader(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Unresolved(message)


@functools.cache
def _reader() -> argparse.ArgumentParser:
    """A parser with the options of `HfArgumentParser(AMPTrainingArguments)` and its abbreviation rules; each option
    takes any number of words, so that reading never fails on a value (the script checks its values itself)."""
    from transformers import HfArgumentParser

    from ..training_args import AMPTrainingArguments

    script = HfArgumentParser(AMPTrainingArguments)
    reader = _Reader(add_help=False, allow_abbrev=script.allow_abbrev, prefix_chars=script.prefix_chars)
    for action in script._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            reader.add_argument(*action.option_strings, dest=action.dest, nargs="*", default=None)
    return reader


_AMBIGUOUS = "--?"
"""What `_argument_of` gives for an ambiguous prefix; no option starts with it, so argparse reads it as unknown."""


def _argument_of(word: str) -> str | None:
    """The argument (dest) that the option word sets; `_AMBIGUOUS` for an ambiguous prefix; None for a value or an
    option the parser does not know."""
    reader = _reader()
    if not word[:1] or word[0] not in reader.prefix_chars:
        return None
    try:
        namespace, _ = reader.parse_known_args([word])
    except _Unresolved:
        return _AMBIGUOUS
    return next((name for name, value in vars(namespace).items() if value is not None), None)


def flag_words(command: Sequence[str]) -> dict[str, str]:
    """Each word of `command` that sets an argument of the training arguments, with that argument:
    `{"--amp_eps": "amp_epsilon", "--do-eval": "do_eval", "--eval_strategy=epoch": "eval_strategy"}`."""
    found = {}
    for word in command:
        argument = _argument_of(word)
        if argument not in (None, _AMBIGUOUS):
            found[word] = argument
    return found


def flag_values(command: Sequence[str]) -> dict[str, list[str]]:
    """The words each argument of the training arguments gets in `command`, at its last occurrence (a bare switch
    such as `--do_train` gets none): `{"do_train": [], "eval_strategy": ["epoch"]}`. Ambiguous prefixes are left
    out, as `flag_words` leaves them out (their values with them). A `--` is skipped, as `flag_words` reads past it:
    in a launcher's command it separates the launcher's words from the script's, which the script reads as flags."""
    words = [_AMBIGUOUS if _argument_of(word) == _AMBIGUOUS else word for word in command if word != "--"]
    namespace, _ = _reader().parse_known_args(words)
    return {name: value for name, value in vars(namespace).items() if value is not None}
