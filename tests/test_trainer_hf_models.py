"""AMPTrainer on real Hugging Face architectures built from tiny configs: resume, Seq2Seq, bf16, AMP off."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from helpers import COMMON, FREE_BALL, params_distance, text_data, tiny_bert
from transformers import (
    T5Config,
    T5ForConditionalGeneration,
    Trainer,
)

from amp_hf import AMPSeq2SeqTrainer, AMPSeq2SeqTrainingArguments, AMPTrainer, AMPTrainingArguments


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    data = text_data()
    settings = dict(COMMON, max_steps=6, save_strategy="steps", save_steps=3, amp_epsilon=0.05, optim="adamw_torch")

    full_args = AMPTrainingArguments(tmp_path / "full", **settings)
    full = AMPTrainer(model=tiny_bert(dropout=0.3), args=full_args, train_dataset=data)
    full.train()

    # A fresh process would do exactly this: new model, new trainer, resume from the step-3 checkpoint.
    resumed = AMPTrainer(
        model=tiny_bert(dropout=0.3), args=AMPTrainingArguments(tmp_path / "resumed", **settings), train_dataset=data
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))

    for (name, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name
    assert any("amp_clean_loss" in e for e in resumed.state.log_history if e["step"] > 3)


def test_amp_off_equals_plain_trainer_with_dropout(tmp_path):
    """No extra pass means no extra random draw either: dropout masks line up bit for bit."""
    data = text_data()
    amp = AMPTrainer(
        model=tiny_bert(dropout=0.1),
        args=AMPTrainingArguments(tmp_path / "a", **COMMON, max_steps=4, amp_inner_steps=0),
        train_dataset=data,
    )
    amp.train()  # each trainer seeds the RNGs when built: build and train one after the other
    erm = Trainer(
        model=tiny_bert(dropout=0.1),
        args=AMPTrainingArguments(tmp_path / "e", **COMMON, max_steps=4),
        train_dataset=data,
    )
    erm.train()
    for (name, a), (_, b) in zip(amp.model.named_parameters(), erm.model.named_parameters()):
        assert torch.equal(a, b), name


def test_bf16_autocast_training(tmp_path):
    """bf16 autocast: the clean loss is the plain Trainer's under the same autocast, and the run lands by the fp32 AMP
    run (bf16 rounding apart), far from ERM's: the ascent under autocast has the fp32 ascent's direction and scale."""
    settings = dict(COMMON, max_steps=3, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0)

    def run(cls, name: str, **overrides):
        model = tiny_bert()
        trainer = cls(model=model, args=AMPTrainingArguments(tmp_path / name, **settings, **overrides),
                      train_dataset=text_data())  # fmt: skip
        trainer.train()
        return trainer

    amp_bf16 = run(AMPTrainer, "amp_bf16", bf16=True, amp_epsilon=FREE_BALL)
    amp_fp32 = run(AMPTrainer, "amp_fp32", amp_epsilon=FREE_BALL)
    erm_bf16, erm_fp32 = run(Trainer, "erm_bf16", bf16=True), run(Trainer, "erm_fp32")
    logs = [e for e in amp_bf16.state.log_history if "amp_clean_loss" in e]
    assert len(logs) == 3 and all(e["amp_skipped"] == 0 for e in logs)
    assert all(p.dtype == torch.float32 for p in amp_bf16.model.parameters())  # autocast, weights stay fp32
    assert logs[0]["amp_clean_loss"] == pytest.approx(
        erm_bf16.state.log_history[0]["loss"], rel=1e-6
    )  # θ₀, same autocast
    fp32_norms = [e["amp_delta_norm"] for e in amp_fp32.state.log_history if "amp_clean_loss" in e]
    assert [e["amp_delta_norm"] for e in logs] == pytest.approx(fp32_norms, rel=1e-2)  # Δ = ζ·g: the same scale
    amp_gap = params_distance(amp_fp32.model, erm_fp32.model)
    assert params_distance(amp_bf16.model, erm_bf16.model) > 0.5 * amp_gap
    assert params_distance(amp_bf16.model, amp_fp32.model) < 0.05 * amp_gap, "bf16 AMP is not near fp32 AMP"


def seq2seq_model() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=48,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )  # fmt: skip - no dropout: the ascent's gradient can be recomputed below
    return T5ForConditionalGeneration(config)


def test_seq2seq_trainer_through_the_mixin(tmp_path):
    """The descent pass of the first step runs at θ + Δ with Δ = ε·g/‖g‖ (the global ball), g the gradient of the
    micro-batch's loss at θ recomputed here; AMP's weights differ from the plain Seq2SeqTrainer's."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(2, 48, (16, 8), generator=g)
    data = Dataset.from_dict({"input_ids": src.tolist(), "labels": src.flip(1).tolist()})
    seen: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    class Spy(AMPSeq2SeqTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if len(seen) < 2:  # the clean pass at θ, then the descent at θ + Δ
                seen.append(({n: p.detach().clone() for n, p in model.named_parameters()}, dict(inputs)))
            return super().compute_loss(model, inputs, *args, **kwargs)

    args = AMPSeq2SeqTrainingArguments(tmp_path / "a", **COMMON, max_steps=3, amp_norm="global", amp_epsilon=0.1)
    trainer = Spy(model=seq2seq_model(), args=args, train_dataset=data)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "amp_clean_loss" in e]
    assert len(logs) == 3
    assert all(e["amp_delta_norm"] == pytest.approx(0.1, rel=1e-4) for e in logs)  # the global ball binds

    (theta, inputs), (perturbed, _) = seen
    at_theta = seq2seq_model()
    at_theta.load_state_dict(theta, strict=False)  # the embeddings tied to `shared` are not listed apart
    assert all(torch.equal(p, theta[n]) for n, p in at_theta.named_parameters())
    at_theta.train()
    names = [n for n, p in at_theta.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(at_theta(**inputs).loss, [dict(at_theta.named_parameters())[n] for n in names])
    total = torch.sqrt(sum((gr.double() ** 2).sum() for gr in grads))
    for name, grad in zip(names, grads):
        torch.testing.assert_close(perturbed[name] - theta[name], (0.1 * grad / total).float(), atol=2e-6, rtol=1e-3,
                                   msg=name)  # fmt: skip

    erm_args = AMPSeq2SeqTrainingArguments(tmp_path / "e", **COMMON, max_steps=3, amp_epsilon=0.0)
    erm = AMPSeq2SeqTrainer(model=seq2seq_model(), args=erm_args, train_dataset=data)
    erm.train()
    assert params_distance(trainer.model, erm.model) > 1e-4  # AMP changed the run


def test_ascent_fraction_on_padded_variable_length_batches(tmp_path):
    """A BERT fed by DataCollatorWithPadding: the ascent sees the first rows of each padded micro-batch, masks and all.
    At ε = 1e-30 (θ + Δ == θ) the weights are the plain Trainer's and the logged loss is the head's clean loss."""
    from transformers import BatchEncoding

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 12, (32,), generator=g).tolist()
    rows = [torch.randint(1, 64, (n,), generator=g).tolist() for n in lengths]
    data = Dataset.from_dict({"input_ids": rows, "labels": [r[0] % 2 for r in rows]})

    class Pad:
        """What DataCollatorWithPadding returns (a BatchEncoding, padded to the longest row), without a tokenizer."""

        def __call__(self, features):
            width = max(len(f["input_ids"]) for f in features)
            ids = torch.tensor([f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features])
            mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
            return BatchEncoding(
                {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in features])}
            )

    seen: list[tuple[int, ...]] = []

    class Spy(AMPTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append(tuple(inputs["input_ids"].shape))
            return super().compute_loss(model, inputs, *args, **kwargs)

    settings = dict(COMMON, max_steps=3, per_device_train_batch_size=8, optim="adamw_torch")
    amp = Spy(
        model=tiny_bert(), args=AMPTrainingArguments(tmp_path / "a", **settings, amp_epsilon=1e-30,
                                                     amp_ascent_fraction=0.25), train_dataset=data, data_collator=Pad(),
    )  # fmt: skip
    amp.train()
    assert [shape[0] for shape in seen] == [2, 8] * 3  # ascent on ⌈0.25·8⌉ = 2 rows, descent on all 8
    assert all(a[1] == d[1] for a, d in zip(seen[::2], seen[1::2]))  # the same padded width
    erm = Trainer(model=tiny_bert(), args=AMPTrainingArguments(tmp_path / "e", **settings), train_dataset=data,
                  data_collator=Pad())  # fmt: skip
    erm.train()
    for (name, a), (_, b) in zip(amp.model.named_parameters(), erm.model.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in amp.state.log_history if "loss" in e)
