"""benchmarks.steps: the live-tensor peak the cost study measures, on a tiny BERT."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer

from amp_hf import AMPTrainer
from benchmarks.steps import make_trainer, parameter_bytes, tensor_peak_bytes


def test_amp_holds_exactly_one_extra_copy_of_the_weights_at_its_peak():
    """AMP K=1 over ERM is θ's saved copy; a Δ kept into the descent would make it ~2×."""
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, num_labels=2)  # fmt: skip
    model = BertForSequenceClassification(config).train()
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1, 1000, (32, 64), generator=g),
        "attention_mask": torch.ones(32, 64, dtype=torch.long),
        "labels": torch.randint(0, 2, (32,), generator=g),
    }
    erm = tensor_peak_bytes(make_trainer(Trainer, model), model, batch)
    amp = tensor_peak_bytes(make_trainer(AMPTrainer, model, amp_inner_steps=1), model, batch)
    assert (amp - erm) / parameter_bytes(model) == pytest.approx(1.0, abs=0.02)
