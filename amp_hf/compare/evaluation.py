"""Whether the command's runs will record a metric, decided from its own flags before anything trains.

The Hugging Face example scripts evaluate only when asked: `--do_eval` (one evaluation of the validation split after
training) or an `--eval_strategy` (evaluations during training, which also sets do_eval). A command that trains
(`--do_train`) with neither records no metric, and compare would find that out only after every run; it is refused
first. Where the flags say nothing (a script that evaluates on its own, arguments in a JSON file), nothing is refused:
the runs stay reusable whatever `--metric` is asked for afterwards. The flags are read as the script's parser reads
them (`script_flags`: `--do-eval`, `--do_ev`, `--eval_strategy=epoch`, the last occurrence winning).
"""

from __future__ import annotations

from collections.abc import Sequence

from .candidates import CompareError
from .script_flags import flag_values

TRUE, FALSE = ("true", "yes", "t", "y", "1"), ("false", "no", "f", "n", "0")
"""The boolean spellings HfArgumentParser accepts (`transformers.hf_argparser.string_to_bool`)."""


def _switch(words: list[str] | None) -> bool | None:
    """A boolean argument's value from its words: None when not given, True for a bare switch."""
    if words is None:
        return None
    return not words or words[-1].lower() in TRUE


def check_evaluation(command: Sequence[str]) -> None:
    """Refuses, before anything trains, a command whose flags say its runs will record no metric: it trains
    (`--do_train`) and neither evaluates during training (`--eval_strategy`) nor after it (`--do_eval`), or it turns
    `--do_eval` off without an eval_strategy."""
    values = flag_values(command)
    strategy = values.get("eval_strategy")
    if strategy and strategy[-1].lower() != "no":
        return
    do_eval, do_train = _switch(values.get("do_eval")), _switch(values.get("do_train"))
    if do_eval:
        return
    if do_eval is False or do_train:
        said = "--do_eval false" if do_eval is False else "--do_train without --do_eval"
        raise CompareError(
            f"the command's flags say its runs evaluate nothing ({said}, and no --eval_strategy): the Hugging Face "
            "example scripts then record no metric, and every run would train for nothing. Add --do_eval (one "
            "evaluation of the validation split after training), or --eval_strategy epoch --save_strategy epoch "
            "--load_best_model_at_end --metric_for_best_model <metric> to compare against early stopping. A script "
            "that evaluates on its own: add --do_eval, which the Trainer itself ignores"
        )
