"""Trainer features AMP cannot run correctly are refused when the trainer is built, naming the field.

Each is simulated on one CPU process: the field is set as a run using the feature would have it (after the Trainer's
own `__init__` where the Trainer would need a process group for it), and AMP off (`amp_epsilon=0`) must still build
the plain Trainer. `half_precision_backend` and `past_index` are fields of transformers 4.x only; on 5.x they are
set on the arguments object as 4.x would hold them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from accelerate.parallelism_config import ParallelismConfig
from helpers import DictDataset, StepsInBackward, TinyClassifier, params_of, tiny_args
from transformers import Trainer

from amp_hf import AMPMixin, AMPTrainer, AMPTrainingArguments


@dataclass
class TwoGPUArguments(AMPTrainingArguments):
    """Arguments of a process that sees two GPUs without a distributed launch: the Trainer wraps nn.DataParallel."""

    @property
    def n_gpu(self) -> int:
        return 2


class FieldsSetAfterTrainerInit(Trainer):
    """Sets `late` fields on the arguments right after `Trainer.__init__`, where AMPMixin checks them: a real
    parallelism_config needs a process group of that size for the Trainer's accelerator to be built at all."""

    late: ClassVar[dict] = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name, value in self.late.items():
            setattr(self.args, name, value)


def build(args, tp_size: int = 1, **late) -> AMPTrainer:
    class Built(AMPMixin, FieldsSetAfterTrainerInit):
        pass

    Built.late = late
    model = TinyClassifier()
    if tp_size > 1:
        model._tp_size = tp_size  # what `from_pretrained(tp_plan=...)` sets, and `Trainer.get_tp_size` reads
    return Built(model=model, args=args, train_dataset=DictDataset())


CASES = {
    "DataParallel": (TwoGPUArguments, {}, 1, r"nn\.DataParallel \(n_gpu=2"),
    "context parallel": (
        AMPTrainingArguments,
        {"parallelism_config": ParallelismConfig(cp_size=2)},
        1,
        r"context parallelism \(parallelism_config\.cp_size=2",
    ),
    "sequence parallel": (
        AMPTrainingArguments,
        {"parallelism_config": ParallelismConfig(sp_size=4, sp_backend="deepspeed")},
        1,
        r"sequence parallelism \(parallelism_config\.sp_size=4",
    ),
    "tensor parallel (model)": (AMPTrainingArguments, {}, 2, r"tensor parallelism \(tensor-parallel size 2"),
    "tensor parallel (config)": (
        AMPTrainingArguments,
        {"parallelism_config": ParallelismConfig(tp_size=2)},
        1,
        r"tensor parallelism \(tensor-parallel size 2",
    ),
    "apex": (AMPTrainingArguments, {"half_precision_backend": "apex"}, 1, r"half_precision_backend='apex'"),
    "past_index": (AMPTrainingArguments, {"past_index": 0}, 1, r"past_index=0 \(allowed: -1\)"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_unsupported_feature_is_refused_at_construction_naming_the_field(tmp_path, case):
    args_cls, late, tp_size, message = CASES[case]

    def args(**overrides):
        return args_cls(tmp_path, use_cpu=True, report_to="none", save_strategy="no", **overrides)

    with pytest.raises(ValueError, match=message) as refused:
        build(args(), tp_size, **late)
    assert "amp_epsilon=0" in str(refused.value)  # says how to train without AMP
    build(args(amp_epsilon=0.0), tp_size, **late)  # AMP off: the plain Trainer's business


def test_a_feature_turned_on_after_construction_is_refused_before_training(tmp_path):
    trainer = AMPTrainer(model=TinyClassifier(), args=tiny_args(tmp_path), train_dataset=DictDataset())
    trainer.args.past_index = 1
    with pytest.raises(ValueError, match="past_index=1"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_user_optimizer_that_steps_in_backward_is_refused_before_it_steps(tmp_path):
    """Not only the named `optim` values: an optimizer handed in that updates the weights in backward would step at
    θ + Δ, and the restore of θ would undo the step (training silently does nothing)."""
    model = TinyClassifier()
    theta = params_of(model)
    optimizers = (StepsInBackward(model), None)
    args = tiny_args(tmp_path / "amp")
    trainer = AMPTrainer(model=model, args=args, train_dataset=DictDataset(), optimizers=optimizers)
    with pytest.raises((RuntimeError, ValueError), match=r"(?i)backward"):
        trainer.train()
    assert all(torch.equal(p, theta[n]) for n, p in model.named_parameters()), "weights moved or left perturbed"
    plain = TinyClassifier()  # AMP off: the plain Trainer's business, and the optimizer does train
    args = tiny_args(tmp_path / "plain", amp_epsilon=0.0)
    AMPTrainer(model=plain, args=args, train_dataset=DictDataset(), optimizers=(StepsInBackward(plain), None)).train()
    assert not torch.equal(plain.fc1.weight, theta["fc1.weight"])
