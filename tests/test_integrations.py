"""AMP with the rest of the ecosystem: PEFT/LoRA, TRL's SFTTrainer, gradient checkpointing, torch.compile."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from helpers import (
    COMMON,
    DictDataset,
    SequentialAMPTrainer,
    TinyClassifier,
    assert_params_close,
    assert_params_far,
    reference_amp,
    text_data,
    tiny_args,
    tiny_bert,
)

from amp_hf import AMPTrainer, AMPTrainingArguments


def test_lora_perturbs_only_the_adapters(tmp_path):
    # here, not at module level, where it skipped the gradient-checkpointing and torch.compile tests too
    peft = pytest.importorskip("peft", reason="PEFT is an optional extra: pip install 'amp-hf[trl]'")
    model = peft.get_peft_model(
        tiny_bert(), peft.LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    )
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    seen: list[dict[str, torch.Tensor]] = []  # the weights at the clean pass (θ) and at the descent pass (θ + Δ)

    class Spy(AMPTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if len(seen) < 2:
                seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
            return super().compute_loss(model, inputs, *args, **kwargs)

    trainer = Spy(
        model=model,
        args=AMPTrainingArguments(tmp_path, **COMMON, max_steps=2, amp_epsilon=0.05),
        train_dataset=text_data(),
    )
    trainer.train()
    perturbed = [n for n, _ in trainer.amp_parameters(model)]
    assert perturbed and all("lora_" in n or "classifier" in n for n in perturbed)  # adapters + the new head
    theta, theta_plus_delta = seen
    # lora_B starts at zero, so only it (and the head) has an ascent gradient on the first step
    lora_b = [n for n in perturbed if "lora_B" in n]
    assert len(lora_b) == 4, perturbed  # query and value of each of the 2 layers: the names the check relies on exist
    assert all(not torch.equal(theta[n], theta_plus_delta[n]) for n in lora_b)
    assert any(not torch.equal(theta[n], theta_plus_delta[n]) for n in perturbed if "classifier" in n)
    for name, before in frozen_before.items():
        assert torch.equal(theta_plus_delta[name], before), f"frozen {name} was perturbed"
        assert torch.equal(dict(model.named_parameters())[name], before), f"frozen {name} changed"
    assert all("amp_clean_loss" in e for e in trainer.state.log_history if "loss" in e)


def tiny_causal_lm_and_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(60)} | {"<pad>": 60, "<eos>": 61, "<unk>": 62}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=63, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=60, eos_token_id=61, bos_token_id=61,
    )  # fmt: skip
    return LlamaForCausalLM(config), tokenizer


def test_trl_sft_trainer_counts_and_records_the_descent_pass_over_the_whole_micro_batch(tmp_path):
    """With the ascent on half of each micro-batch (`amp_ascent_fraction`=0.5) and a ball so small that θ + Δ == θ,
    TRL's token count, its metrics and the loss are the plain SFTTrainer's: they come from the descent pass over the
    whole micro-batch, once, not from the ascent passes on the head."""
    pytest.importorskip("trl", reason="TRL is an optional extra: pip install 'amp-hf[trl]'")
    from trl import SFTConfig, SFTTrainer

    from amp_hf.sft import AMPSFTConfig, AMPSFTTrainer

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 12, (16,), generator=g)  # ragged: padding and token normalisation both matter
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(0, 60, (int(n),), generator=g)) for n in lengths]
    data = Dataset.from_dict({"text": texts})
    common = dict(max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=2, logging_steps=1)
    common |= dict(report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)

    model, tokenizer = tiny_causal_lm_and_tokenizer()
    settings = dict(amp_epsilon=1e-30, amp_ascent_fraction=0.5)
    amp = AMPSFTTrainer(
        model=model, args=AMPSFTConfig(tmp_path / "a", **settings, **common), train_dataset=data,
        processing_class=tokenizer,
    )  # fmt: skip
    amp.train()
    model, tokenizer = tiny_causal_lm_and_tokenizer()
    sft = SFTTrainer(
        model=model, args=SFTConfig(tmp_path / "s", **common), train_dataset=data, processing_class=tokenizer
    )
    sft.train()

    amp_logs = [e for e in amp.state.log_history if "loss" in e]
    sft_logs = [e for e in sft.state.log_history if "loss" in e]
    assert len(amp_logs) == len(sft_logs) == 2
    for amp_log, sft_log in zip(amp_logs, sft_logs):
        assert amp_log["amp_steps"] == 1 and amp_log["amp_skipped"] == 0
        assert amp_log["num_tokens"] == sft_log["num_tokens"]
        assert amp_log["mean_token_accuracy"] == pytest.approx(sft_log["mean_token_accuracy"], rel=1e-6)
        assert amp_log["entropy"] == pytest.approx(sft_log["entropy"], rel=1e-5)
        assert amp_log["loss"] == pytest.approx(sft_log["loss"], rel=1e-5)


def test_gradient_checkpointing_gives_the_same_update(tmp_path):
    data = text_data()

    def trained(**extra):
        trainer = AMPTrainer(
            model=tiny_bert(),
            args=AMPTrainingArguments(tmp_path, **COMMON, max_steps=2, amp_epsilon=0.05, **extra),
            train_dataset=data,
        )
        trainer.train()
        return trainer.model

    plain, checkpointed = trained(), trained(gradient_checkpointing=True)
    assert checkpointed.is_gradient_checkpointing
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_torch_compile_matches_reference(tmp_path):
    data = DictDataset()
    trainer = SequentialAMPTrainer(
        model=TinyClassifier(), args=tiny_args(tmp_path, torch_compile=True, amp_epsilon=0.05), train_dataset=data
    )
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"
    assert [n for n, _ in trainer.amp_parameters(trainer.model_wrapped)] == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]  # fmt: skip - names without the "_orig_mod." prefix, so amp_exclude patterns still match
    assert_params_close(trainer.model, reference_amp(TinyClassifier(), data, steps=3, batch_size=4, epsilon=0.05))
    erm = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, epsilon=0.0)
    assert_params_far(trainer.model, erm, what="AMP vs ERM")  # the comparison is not vacuous
