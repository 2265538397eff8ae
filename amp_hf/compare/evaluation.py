"""Whether the command's runs will record a metric, decided from its own flags before anything trains.

The Hugging Face example scripts evaluate only when asked: `--do_eval` (one evaluation of the validation split after
training) or an `--eval_strategy` (evaluations during training, which also sets do_eval). A command that trains
(`--do_train`) with neither records no metric, and compare would find that out only after every run; it is refused
first. Where the flags say nothing (a script that evaluates on its own, arguments in a JSON file), nothing is refused:
the runs stay reusable whatever `--metric` is asked for afterwards.

Flags are read as the script's HfArgumentParser reads them: `--name value`, `--name=value`, the dashed alias
(`--do-eval`), an unambiguous prefix (argparse's abbreviations: `--do_ev`), the last occurrence winning.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from .candidates import CompareError

TRUE, FALSE = ("true", "yes", "t", "y", "1"), ("false", "no", "f", "n", "0")
"""The boolean spellings HfArgumentParser accepts (`transformers.hf_argparser.string_to_bool`)."""


@functools.cache
def _known() -> tuple[str, ...]:
    """The field names of the training arguments: a prefix is an abbreviation when it matches one of them only."""
    from ..training_args import AMPTrainingArguments

    return tuple(f.name for f in dataclasses.fields(AMPTrainingArguments))


def flag_name(word: str, known: Sequence[str] | None = None) -> str | None:
    """The argument `word` sets (`--name`, `--name=value`, `--na-me`, an unambiguous prefix), None if none."""
    if not word.startswith("--") or len(word) == 2:
        return None
    name = word[2:].split("=", 1)[0].replace("-", "_")
    known = _known() if known is None else known
    if name in known:
        return name
    matches = [k for k in known if k.startswith(name)]
    return matches[0] if len(matches) == 1 else None


def flag_value(command: Sequence[str], name: str, boolean: bool = False) -> str | None:
    """The value the command gives argument `name` (its last occurrence), None when it does not set it. A boolean
    flag given bare is "true"."""
    value = None
    for i, word in enumerate(command):
        if flag_name(word) != name:
            continue
        following = command[i + 1] if i + 1 < len(command) else None
        if "=" in word:
            value = word.split("=", 1)[1]
        elif boolean:
            value = following if following is not None and following.lower() in TRUE + FALSE else "true"
        else:
            value = following
    return value.lower() if value is not None else None


def check_evaluation(command: Sequence[str]) -> None:
    """Refuses, before anything trains, a command whose flags say its runs will record no metric: it trains
    (`--do_train`) and neither evaluates during training (`--eval_strategy`) nor after it (`--do_eval`), or it turns
    `--do_eval` off without an eval_strategy."""
    strategy = flag_value(command, "eval_strategy")
    evaluates_during = strategy is not None and strategy != "no"
    do_eval = flag_value(command, "do_eval", boolean=True)
    do_train = flag_value(command, "do_train", boolean=True)
    if evaluates_during or do_eval in TRUE:
        return
    if do_eval in FALSE or do_train in TRUE:
        said = "--do_eval false" if do_eval in FALSE else "--do_train without --do_eval"
        raise CompareError(
            f"the command's flags say its runs evaluate nothing ({said}, and no --eval_strategy): the Hugging Face "
            "example scripts then record no metric, and every run would train for nothing. Add --do_eval (one "
            "evaluation of the validation split after training), or --eval_strategy epoch --save_strategy epoch "
            "--load_best_model_at_end --metric_for_best_model <metric> to compare against early stopping. A script "
            "that evaluates on its own: add --do_eval, which the Trainer itself ignores"
        )
