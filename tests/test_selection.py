"""What AMP perturbs: amp_include / amp_exclude, the public listing, and the line logged when training starts."""

from __future__ import annotations

import logging

import datasets
import pytest
import torch
from helpers import DictDataset, TinyClassifier, tiny_args, tiny_gpt2
from transformers import HfArgumentParser, ViTConfig, ViTForImageClassification

from amp_hf import AMP, AMPConfig, AMPTrainer, AMPTrainingArguments, perturbed_parameter_names
from amp_hf.selection import report
from amp_hf.trainer_versions import TRAINER_4X

VIT_LAYER = "vit.encoder.layer.0" if TRAINER_4X else "vit.layers.0"  # transformers 5 renamed ViT's encoder layers


def tiny_vit() -> ViTForImageClassification:
    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=3,
    )  # fmt: skip
    return ViTForImageClassification(config)


def test_include_perturbs_only_the_normalisation_layers_of_a_vit():
    names = perturbed_parameter_names(tiny_vit(), AMPConfig(include=["layernorm"]))
    assert names == [
        f"{VIT_LAYER}.layernorm_before.weight",
        f"{VIT_LAYER}.layernorm_before.bias",
        f"{VIT_LAYER}.layernorm_after.weight",
        f"{VIT_LAYER}.layernorm_after.bias",
        "vit.layernorm.weight",
        "vit.layernorm.bias",
    ]
    # exclude removes from the included set; training arguments work as settings too
    args = AMPTrainingArguments(output_dir="unused", amp_include=["layernorm"], amp_exclude=[r"\.bias$"])
    assert perturbed_parameter_names(tiny_vit(), args) == [n for n in names if n.endswith(".weight")]


def test_frozen_parameters_are_not_listed():
    model = TinyClassifier()
    model.fc1.weight.requires_grad_(False)
    assert perturbed_parameter_names(model, AMPConfig()) == ["fc1.bias", "fc2.weight", "fc2.bias"]


def test_report_names_patterns_that_match_nothing():
    # the README's old example on a ViT: 'LayerNorm' is BERT's spelling; and a comma-joined list is one pattern
    found = report(tiny_vit(), AMPConfig(exclude=["bias", "LayerNorm", "bias,layernorm"]))
    assert found.unmatched == {"include": (), "exclude": ("LayerNorm", "bias,layernorm")}
    assert found.tensors < found.trainable_tensors
    problems = found.problems()
    assert len(problems) == 1 and "amp_exclude pattern(s) ['LayerNorm', 'bias,layernorm'] match no" in problems[0]
    assert "not comma-separated" in problems[0]


def test_training_start_logs_what_is_perturbed_and_warns_about_dead_patterns(tmp_path, caplog):
    args = tiny_args(tmp_path, max_steps=1, amp_exclude=["bias", "nothing_here"])
    with caplog.at_level(logging.INFO, logger="amp_hf.trainer"):
        AMPTrainer(model=TinyClassifier(), args=args, train_dataset=DictDataset()).train()
    messages = [r.getMessage() for r in caplog.records]
    summary = [m for m in messages if m.startswith("AMP perturbs")]
    assert len(summary) == 1 and "2 of 4 trainable tensors (72 of 83 parameters, 86.7%)" in summary[0]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "match no parameter" in r.getMessage()]
    assert len(warned) == 1 and "['nothing_here']" in warned[0].getMessage()


def test_a_selection_that_perturbs_nothing_is_a_warning(tmp_path, caplog):
    args = tiny_args(tmp_path, max_steps=1, amp_exclude=["."])
    with caplog.at_level(logging.WARNING, logger="amp_hf.trainer"):
        trainer = AMPTrainer(model=TinyClassifier(), args=args, train_dataset=DictDataset())
        trainer.train()
    assert any("AMP perturbs no parameter" in r.getMessage() for r in caplog.records)
    assert trainer.amp_parameter_names() == []


def test_comma_joined_patterns_from_the_command_line_are_one_pattern_and_get_reported(tmp_path, caplog):
    (args,) = HfArgumentParser(AMPTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--amp_exclude=bias,layernorm", "--use_cpu", "--max_steps", "1",
         "--report_to", "none"]
    )  # fmt: skip
    assert args.amp_exclude == ["bias,layernorm"]
    with caplog.at_level(logging.WARNING, logger="amp_hf.trainer"):
        AMPTrainer(model=TinyClassifier(), args=args, train_dataset=DictDataset()).train()
    assert any("['bias,layernorm'] match no parameter" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", [5, {"bias": 1}, b"bias"])
def test_wrong_pattern_types_are_a_value_error_naming_the_field(tmp_path, bad):
    with pytest.raises(ValueError, match="amp_exclude must be a list of regular expressions"):
        AMPTrainingArguments(output_dir=str(tmp_path), amp_exclude=bad)


# ------------------------------------------------------------------------------------------------- tied weights
TIED = "transformer.wte.weight"
"""GPT-2's input embedding, which is also `lm_head.weight`; `named_parameters()` lists it under this name only."""


def lm_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 50, (4, 10), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


def test_a_pattern_naming_the_second_alias_of_a_tied_tensor_excludes_it(tmp_path, caplog):
    model = tiny_gpt2()
    assert model.lm_head.weight is model.get_parameter(TIED)
    args = AMPTrainingArguments(output_dir=str(tmp_path), amp_exclude=["lm_head"])
    names = perturbed_parameter_names(model, args)
    assert TIED not in names and "lm_head.weight" not in names
    assert len(names) == len(list(model.parameters())) - 1  # only the tied tensor is excluded
    with caplog.at_level(logging.WARNING):
        amp = AMP(model, amp_exclude=["lm_head"])
    assert all(p is not model.lm_head.weight for _, p in amp.named_parameters())
    assert "match no parameter" not in caplog.text


def test_the_trainer_excludes_a_tied_tensor_through_its_alias(tmp_path, caplog):
    batch = lm_batch()
    data = datasets.Dataset.from_dict({k: v.tolist() for k, v in batch.items()})
    args = tiny_args(tmp_path, max_steps=1, optim="adamw_torch", learning_rate=1e-3, amp_exclude=["lm_head"])
    trainer = AMPTrainer(model=tiny_gpt2(), args=args, train_dataset=data)
    assert TIED not in trainer.amp_parameter_names()
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "match no parameter" not in caplog.text


def test_a_pattern_naming_the_second_alias_selects_the_tied_tensor_once_and_perturbs_it_once():
    model = tiny_gpt2()
    assert perturbed_parameter_names(model, AMPConfig(include=["lm_head"])) in (["lm_head.weight"], [TIED])
    epsilon = 0.05
    amp = AMP(model, amp_epsilon=epsilon, amp_include=["lm_head"])
    (selected,) = amp.named_parameters()
    assert selected[1] is model.lm_head.weight
    theta = model.lm_head.weight.detach().clone()
    batch = lm_batch()
    with amp.perturbed(batch):
        moved = float((model.lm_head.weight - theta).norm())
        model(**batch).loss.backward()
    assert 0 < moved <= epsilon * (1 + 1e-5)  # one Δ inside its ball, not two added on top of each other


def test_a_tied_tensor_perturbed_with_everything_stays_in_its_ball():
    model = tiny_gpt2()
    epsilon = 0.05
    amp = AMP(model, amp_epsilon=epsilon)
    assert sum(p is model.lm_head.weight for _, p in amp.named_parameters()) == 1
    theta = model.lm_head.weight.detach().clone()
    with amp.perturbed(lm_batch()):
        moved = float((model.lm_head.weight - theta).norm())
    assert 0 < moved <= epsilon * (1 + 1e-5)
