"""What AMP does is said where a user sees it: at the default logging configuration, where `logger.info` shows
nothing, AMPTrainer and `amp_hf.AMP` say at training start what is perturbed and with which settings, or that AMP
is off; and the reference defaults on a pretrained model or with an AdamW optimizer get a warning naming a preset.

"Seen" means a record at WARNING or above from amp_hf (Python's default threshold), or text printed to the terminal.
"""

from __future__ import annotations

import logging
import re

import pytest
from helpers import DictDataset, TinyClassifier, text_data, tiny_args, tiny_bert

from amp_hf import AMP, AMPTrainer

OFF = re.compile(r"(?i)\boff\b|disabled|plain (ERM|training)")


@pytest.fixture
def seen(caplog, capfd):
    """The text a user sees at Python's default logging configuration: the root logger at WARNING, amp_hf's loggers
    without a level of their own; records at WARNING or above from amp_hf, and whatever was printed."""
    loggers = [logging.getLogger(name) for name in ("amp_hf", "amp_hf.trainer", "amp_hf.loop")]
    levels = [(logger, logger.level) for logger in loggers]
    root = logging.getLogger()
    root_level = root.level
    root.setLevel(logging.WARNING)
    for logger in loggers:
        logger.setLevel(logging.NOTSET)

    def read() -> str:
        records = [
            r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("amp_hf")
        ]
        printed = capfd.readouterr()
        return "\n".join([*records, printed.out, printed.err])

    yield read
    root.setLevel(root_level)
    for logger, level in levels:
        logger.setLevel(level)


def train(tmp_path, model=None, data=None, **overrides) -> None:
    args = tiny_args(tmp_path, max_steps=1, **overrides)
    AMPTrainer(model=model or TinyClassifier(), args=args, train_dataset=data or DictDataset()).train()


def says_what_is_perturbed(text: str, epsilon: str) -> bool:
    return bool(re.search(r"(?i)perturb", text)) and epsilon in text


def test_trainer_says_what_it_perturbs_and_the_settings(tmp_path, seen):
    train(tmp_path, amp_epsilon=0.0625)
    assert says_what_is_perturbed(seen(), "0.0625")


def test_trainer_says_amp_is_off_under_the_finetune_preset(tmp_path, seen):
    train(tmp_path, amp_preset="finetune")
    assert OFF.search(seen())


def test_loop_says_what_it_perturbs_and_the_settings(seen):
    model, data = TinyClassifier(), DictDataset(n=4)
    amp = AMP(model, amp_epsilon=0.0625)
    with amp.perturbed({"x": data.x, "labels": data.y}):
        pass
    assert says_what_is_perturbed(seen(), "0.0625")


def test_loop_says_amp_is_off_under_the_finetune_preset(seen):
    model, data = TinyClassifier(), DictDataset(n=4)
    amp = AMP(model, amp_preset="finetune")
    with amp.perturbed({"x": data.x, "labels": data.y}):
        pass
    assert OFF.search(seen())


def pretrained_bert():
    model = tiny_bert()
    model.config._name_or_path = "bert-base-uncased"  # what from_pretrained records
    return model


def test_reference_defaults_on_a_pretrained_model_warn_naming_the_finetune_preset(tmp_path, seen):
    train(tmp_path, model=pretrained_bert(), data=text_data())  # SGD, no amp_* value and no preset
    assert "finetune" in seen()


def test_reference_defaults_with_adamw_warn_naming_the_finetune_preset(tmp_path, seen):
    train(tmp_path, optim="adamw_torch")  # the Trainer's default optimizer
    assert "finetune" in seen()


@pytest.mark.parametrize(
    ("model", "settings"),
    [
        (TinyClassifier, {}),  # SGD, a model built from scratch: what the reference defaults are for
        (pretrained_bert, {"optim": "adamw_torch", "amp_epsilon": 0.01}),  # chosen settings, not the defaults
    ],
)
def test_no_preset_warning_where_the_defaults_fit_or_were_not_used(tmp_path, seen, model, settings):
    data = text_data() if model is pretrained_bert else DictDataset()
    train(tmp_path, model=model(), data=data, **settings)
    assert "finetune" not in seen()
