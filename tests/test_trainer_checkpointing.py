"""Reentrant gradient checkpointing (`use_reentrant=True`, transformers 4.x's default): its backward refuses
`torch.autograd.grad`, so AMP takes the ascent gradient by a real backward with `.grad` moved aside and put back.

DDP with a reentrant checkpoint (no extra communication, the reference's weights) is checked in `ddp_worker.py`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from edge_models import ReentrantCheckpointed
from helpers import (
    COMMON,
    DictDataset,
    SequentialAMPTrainer,
    TinyClassifier,
    assert_params_close,
    reference_amp,
    text_data,
    tiny_args,
    tiny_bert,
)
from transformers import Trainer

import amp_hf.trainer
from amp_hf import AMPMixin, AMPTrainer, AMPTrainingArguments
from amp_hf.micro_batch import MicroBatchAMP


def test_reentrant_checkpoint_matches_the_reference_with_accumulation(tmp_path):
    """With GA = 2 the second micro-batch's ascent runs while `.grad` holds the first's gradient: a backward that
    did not move it aside and put it back would change the update. Δ is not clipped everywhere (ε = 0.05 binds on
    some tensors only), so the ascent's scale shows too."""
    data = DictDataset()
    trainer = SequentialAMPTrainer(
        model=ReentrantCheckpointed(),
        args=tiny_args(tmp_path, amp_epsilon=0.05, gradient_accumulation_steps=2),
        train_dataset=data,
    )
    trainer.train()
    assert trainer._amp._reentrant == (id(trainer.model), True)  # the checkpoint was found in the graph
    expected = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, grad_accum=2, epsilon=0.05)
    assert_params_close(trainer.model, expected)
    erm = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, grad_accum=2, epsilon=0.0)
    assert max((a - b).abs().max() for a, b in zip(expected.parameters(), erm.parameters())) > 1e-4  # AMP moved


def test_ascent_under_reentrant_checkpointing_leaves_grad_untouched(tmp_path, monkeypatch):
    """The second micro-batch's ascent: `.grad` holds the same tensors with the same values before and after."""
    seen = []
    gradient = MicroBatchAMP.gradient

    def spy(self, model, *args, **kwargs):
        before = [(p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
        result = gradient(self, model, *args, **kwargs)
        kept = all(p.grad is g and (g is None or torch.equal(g, v)) for p, (g, v) in zip(model.parameters(), before))
        seen.append((kept, any(g is not None for g, _ in before)))
        return result

    monkeypatch.setattr(MicroBatchAMP, "gradient", spy)
    trainer = SequentialAMPTrainer(
        model=ReentrantCheckpointed(),
        args=tiny_args(tmp_path, max_steps=1, gradient_accumulation_steps=2),
        train_dataset=DictDataset(),
    )
    trainer.train()
    assert seen == [(True, False), (True, True)]  # kept; micro-batch 2's ascent found micro-batch 1's .grad


def test_trainer_gradient_checkpointing_with_use_reentrant_gives_the_same_update(tmp_path):
    """The Trainer's own `gradient_checkpointing` with `{"use_reentrant": True}` on a tiny BERT: the update equals
    the one without checkpointing (it crashed in the first AMP step: ".grad() is not supported")."""
    data = text_data()

    def trained(**extra):
        args = AMPTrainingArguments(
            tmp_path, **COMMON, max_steps=2, amp_epsilon=0.05, gradient_accumulation_steps=2, **extra
        )
        trainer = AMPTrainer(model=tiny_bert(), args=args, train_dataset=data)
        trainer.train()
        return trainer

    plain = trained()
    checkpointed = trained(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    assert checkpointed.model.is_gradient_checkpointing and checkpointed._amp._reentrant[1]
    assert not plain._amp._reentrant[1]
    assert [e["amp_skipped"] for e in checkpointed.state.log_history if "loss" in e] == [0, 0]
    for (name, a), (_, b) in zip(plain.model.named_parameters(), checkpointed.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_reentrant_checkpointing_under_deepspeed_is_refused_at_construction(tmp_path):
    """Under DeepSpeed the ascent's backward would feed the engine's gradient buffers: refused, naming the field."""

    class PretendDeepSpeed(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.is_deepspeed_enabled = True  # no ZeRO-3 plugin: only the checkpointing check applies

    class AMPOnPretendDeepSpeed(AMPMixin, PretendDeepSpeed):
        pass

    reentrant = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant"):
        AMPOnPretendDeepSpeed(
            model=TinyClassifier(), args=tiny_args(tmp_path, **reentrant), train_dataset=DictDataset()
        )
    non_reentrant = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    AMPOnPretendDeepSpeed(
        model=TinyClassifier(), args=tiny_args(tmp_path, **non_reentrant), train_dataset=DictDataset()
    )
    AMPOnPretendDeepSpeed(  # AMP off is the plain Trainer
        model=TinyClassifier(), args=tiny_args(tmp_path, amp_epsilon=0.0, **reentrant), train_dataset=DictDataset()
    )


def test_reentrant_checkpoint_found_under_deepspeed_is_refused_at_the_first_ascent(tmp_path, monkeypatch):
    """Checkpointing turned on by the model itself (not the arguments): refused when the ascent finds the segment,
    before any backward. The engine is a stand-in: what the ascent asks of it is an fp32 engine's."""
    trainer = AMPTrainer(model=ReentrantCheckpointed(), args=tiny_args(tmp_path), train_dataset=DictDataset())
    engine = SimpleNamespace(fp16_enabled=lambda: False, module=trainer.model)
    monkeypatch.setattr(amp_hf.trainer.deepspeed_engine, "engine_of", lambda model: engine)
    params = list(trainer.model.parameters())
    batch = {"x": torch.randn(4, 6), "labels": torch.tensor([0, 1, 2, 0])}
    trainer.current_gradient_accumulation_steps = 1  # set by train(); here one step is called by hand
    with pytest.raises(ValueError, match="use_reentrant"):
        trainer.training_step(trainer.model, batch)
    assert all(p.grad is None for p in params)  # refused before any backward
