"""A loss that is not finite at θ + Δ: the micro-batch is retrained at θ, on every loss path of the Trainer.

The first `compute_loss` call of the descent pass may pop `labels` from the inputs (label smoother,
`compute_loss_func`); the retraining at θ must see them again. Under DDP every process falls back when one does
(`ddp_worker.py`); under FSDP2 the retraining must not run on the root module's gathered θ + Δ (`fsdp_worker.py`).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from edge_models import LogitsOverflowWhenPushed
from helpers import DictDataset, SequentialAMPTrainer, SequentialTrainer, assert_params_equal, tiny_args
from torch import nn


def doubled_cross_entropy(outputs, labels, num_items_in_batch=None):
    """A `compute_loss_func`: the Trainer pops `labels` before calling it."""
    return nn.functional.cross_entropy(outputs["logits"], labels) * 2.0


LOSS_PATHS = {
    "model loss": ({}, {}),
    "label smoother": ({"label_smoothing_factor": 0.1}, {}),
    "compute_loss_func": ({}, {"compute_loss_func": doubled_cross_entropy}),
}


@pytest.mark.parametrize("path", LOSS_PATHS, ids=list(LOSS_PATHS))
def test_overflow_at_the_perturbed_weights_retrains_at_theta_on_every_loss_path(tmp_path, path):
    args, trainer_kwargs = LOSS_PATHS[path]
    data = DictDataset()
    calls: list[object] = []

    class LabelsSeen(SequentialAMPTrainer):
        def compute_loss(self, model, inputs, *rest, **kwargs):
            calls.append(inputs.get("labels"))
            return super().compute_loss(model, inputs, *rest, **kwargs)

    def run(trainer_cls, out):
        model = LogitsOverflowWhenPushed()
        model.config = SimpleNamespace()  # the label smoother's path reads the model's config
        trainer = trainer_cls(
            model=model, args=tiny_args(tmp_path / out, max_steps=1, **args), train_dataset=data, **trainer_kwargs
        )
        trainer.train()
        return trainer

    amp, erm = run(LabelsSeen, "amp"), run(SequentialTrainer, "erm")
    assert len(calls) == 3 and all(torch.is_tensor(labels) for labels in calls)  # clean, θ + Δ, θ: labels each time
    logs = amp.state.log_history[0]
    assert logs["amp_skipped"] == 1 and logs["amp_delta_norm"] == 0.0
    assert logs["loss"] == erm.state.log_history[0]["loss"]
    assert all(torch.isfinite(p).all() for p in amp.model.parameters())
    assert_params_equal(amp.model, erm.model)  # the micro-batch was trained at θ: the plain Trainer's step
    assert amp.model.s.item() != 0.0  # and it was trained: s has a gradient at θ
