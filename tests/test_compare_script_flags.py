"""amp_hf.compare.script_flags: the user's command read as HfArgumentParser(AMPTrainingArguments) reads it."""

from __future__ import annotations

from transformers import HfArgumentParser

from amp_hf import AMPTrainingArguments
from amp_hf.compare.script_flags import flag_values, flag_words

COMMAND = [
    *"accelerate launch --num_processes 2 train.py --do_train --my_flag 5 --do-eval false".split(),
    *"--eval_strategy=epoch --amp_e 3 --amp_eps 0.1 --learning_rate 1e-3 --amp_exclude bias norm".split(),
    *"--eval_strategy steps -- --amp_pre sam".split(),
]


def test_every_spelling_is_read_as_the_argument_it_sets():
    assert flag_words(COMMAND) == {
        "--do_train": "do_train",
        "--do-eval": "do_eval",
        "--eval_strategy=epoch": "eval_strategy",
        "--amp_eps": "amp_epsilon",
        "--learning_rate": "learning_rate",
        "--amp_exclude": "amp_exclude",
        "--eval_strategy": "eval_strategy",
        "--amp_pre": "amp_preset",
    }  # not the launcher's --num_processes, the script's own --my_flag, nor the ambiguous --amp_e


def test_values_are_the_last_occurrences_and_an_ambiguous_prefix_takes_none():
    assert flag_values(COMMAND) == {
        "do_train": [],
        "do_eval": ["false"],
        "eval_strategy": ["steps"],
        "amp_epsilon": ["0.1"],
        "learning_rate": ["1e-3"],
        "amp_exclude": ["bias", "norm"],
        "amp_preset": ["sam"],
    }


def test_the_reading_agrees_with_the_scripts_own_parser(tmp_path):
    words = ["--do-pred", "true", "--eval_str=epoch", "--amp_eps", "0.1", "--amp-exclude", "bias", "--amp_pre", "sam"]
    (args,) = HfArgumentParser(AMPTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), *words]
    )
    values = flag_values(words)
    assert args.do_predict is True and values["do_predict"] == ["true"]
    assert args.eval_strategy == "epoch" and values["eval_strategy"] == ["epoch"]
    assert args.amp_epsilon == 0.1 and values["amp_epsilon"] == ["0.1"]
    assert args.amp_exclude == ["bias"] and values["amp_exclude"] == ["bias"]
    assert args.amp_preset == "sam" and values["amp_preset"] == ["sam"]
