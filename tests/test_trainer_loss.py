"""The logged `loss` is the plain Trainer's number at the same weights, on every loss path the Trainer has.

At ε = 1e-30, θ + Δ equals θ bit for bit, so an AMP run and a plain run walk through the same weights and every
logged `loss` must agree: models that honour `num_items_in_batch` or ignore it, `compute_loss_func` returning a mean
or a sum over the count, a custom `compute_loss`, the label smoother, with gradient accumulation; a micro-batch with
no labelled item trains as in the Trainer and is not an ascent failure. (Two processes: `ddp_worker.py`.)
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import (
    FREE_BALL,
    DictDataset,
    MeanLossWithKwargs,
    SequentialAMPTrainer,
    SequentialTrainer,
    TinyClassifier,
    TokenNormalisedClassifier,
    assert_only_the_right_scale_matches,
    reference_amp,
    reference_perturbed,
    text_data,
    tiny_args,
    tiny_bert,
    tiny_gpt2,
)
from torch import nn

from amp_hf import AMP
from amp_hf.trainer_versions import TRAINER_4X

TINY_BALL = 1e-30  # θ + Δ == θ in float32: both runs see the same weights at every step


def mean_loss_func(outputs, labels, num_items_in_batch=None):
    return nn.functional.cross_entropy(outputs["logits"], labels, ignore_index=-100)


def sum_over_count_loss_func(outputs, labels, num_items_in_batch=None):
    """Divides by the count, as token-normalised SFT losses do (the Trainer always passes one)."""
    return (
        nn.functional.cross_entropy(outputs["logits"], labels, ignore_index=-100, reduction="sum") / num_items_in_batch
    )


class DoubledLossTrainerMixin:
    """A custom `compute_loss` that does its own thing with the model's outputs."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = 2.0 * outputs["loss"] + 0.1
        return (loss, outputs) if return_outputs else loss


class DoubledAMP(DoubledLossTrainerMixin, SequentialAMPTrainer):
    pass


class DoubledERM(DoubledLossTrainerMixin, SequentialTrainer):
    pass


def empty_window_data() -> DictDataset:
    """Micro-batch 2 (rows 4-7) has no labelled item, inside an accumulation window: completion-only SFT makes these."""
    data = DictDataset(n=32, ignored_every=3)
    data.y[4:8] = -100
    return data


def logged(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


CASES = {
    "mean model": (TinyClassifier, {}, SequentialAMPTrainer, SequentialTrainer, DictDataset),
    "kwargs-ignoring model (BERT-like)": (MeanLossWithKwargs, {}, SequentialAMPTrainer, SequentialTrainer, DictDataset),
    "token-normalised model": (TokenNormalisedClassifier, {}, SequentialAMPTrainer, SequentialTrainer, DictDataset),
    "token-normalised, empty micro-batch": (
        TokenNormalisedClassifier, {}, SequentialAMPTrainer, SequentialTrainer, empty_window_data,
    ),
    "compute_loss_func mean": (
        TinyClassifier, {"compute_loss_func": mean_loss_func}, SequentialAMPTrainer, SequentialTrainer, DictDataset,
    ),
    "compute_loss_func sum / count": (
        TinyClassifier, {"compute_loss_func": sum_over_count_loss_func}, SequentialAMPTrainer, SequentialTrainer,
        empty_window_data,
    ),
    "custom compute_loss": (TinyClassifier, {}, DoubledAMP, DoubledERM, DictDataset),
}  # fmt: skip


MEAN_SCALED = ("mean model", "token-normalised model", "custom compute_loss")
"""The cases whose logged `loss` is the mean over the window's micro-batches of their mean losses."""


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_logged_loss_equals_the_plain_trainers(tmp_path, case, grad_accum):
    model_cls, kwargs, amp_cls, erm_cls, data_fn = CASES[case]
    common = dict(gradient_accumulation_steps=grad_accum, max_steps=4, logging_steps=1)
    amp = amp_cls(
        model=model_cls(), args=tiny_args(tmp_path / "a", amp_epsilon=TINY_BALL, **common), train_dataset=data_fn(),
        **kwargs,
    )  # fmt: skip
    erm = erm_cls(model=model_cls(), args=tiny_args(tmp_path / "e", **common), train_dataset=data_fn(), **kwargs)
    amp.train()
    erm.train()
    assert logged(amp) == pytest.approx(logged(erm), rel=1e-6, abs=1e-7)
    assert all(torch.isfinite(torch.tensor(logged(amp))))
    amp_logs = [e for e in amp.state.log_history if "loss" in e]
    assert sum(e["amp_skipped"] for e in amp_logs) == 0  # an empty micro-batch is not an ascent failure
    # amp_clean_loss is the mean over the window's micro-batches of each one's mean loss at θ: the Trainer's number
    # too where the Trainer's is that mean (no micro-batch without items; with accumulation, a loss normalised by the
    # count or a model the Trainer divides by the accumulation steps; a mean loss taking loss kwargs is summed)
    if case in MEAN_SCALED or (grad_accum == 1 and data_fn is DictDataset):
        assert [e["amp_clean_loss"] for e in amp_logs] == pytest.approx(logged(erm), rel=1e-6, abs=1e-7)


def test_label_smoother_logged_loss_equals_the_plain_trainers(tmp_path):
    models = [TinyClassifier(), TinyClassifier()]
    for model in models:
        model.config = SimpleNamespace()  # the label smoother looks at model.config
    common = dict(gradient_accumulation_steps=2, max_steps=3, label_smoothing_factor=0.1)
    amp = SequentialAMPTrainer(
        model=models[0], args=tiny_args(tmp_path / "a", amp_epsilon=TINY_BALL, **common), train_dataset=DictDataset()
    )
    erm = SequentialTrainer(model=models[1], args=tiny_args(tmp_path / "e", **common), train_dataset=DictDataset())
    amp.train()
    erm.train()
    assert logged(amp) == pytest.approx(logged(erm), rel=1e-6)


def test_bert_with_accumulation_logs_the_trainers_loss(tmp_path):
    """BertForSequenceClassification accepts loss kwargs but averages itself: the case that logged half the loss."""
    common = dict(gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-3, optim="adamw_torch")
    amp = SequentialAMPTrainer(
        model=tiny_bert(), args=tiny_args(tmp_path / "a", amp_epsilon=TINY_BALL, **common), train_dataset=text_data()
    )
    erm = SequentialTrainer(model=tiny_bert(), args=tiny_args(tmp_path / "e", **common), train_dataset=text_data())
    amp.train()
    erm.train()
    # 5.x's BERT accepts loss kwargs (the Trainer then does not divide its mean by the accumulation); 4.57's does not
    assert amp.model_accepts_loss_kwargs == (not TRAINER_4X)
    assert logged(amp) == pytest.approx(logged(erm), rel=1e-5)
    amp_logs = [e for e in amp.state.log_history if "loss" in e]
    # the mean loss; the Trainer sums a model's mean over the window when the model takes loss kwargs (5.x)
    summed = 2 if amp.model_accepts_loss_kwargs else 1
    assert [summed * e["amp_clean_loss"] for e in amp_logs] == pytest.approx(logged(erm), rel=1e-5)


def test_compute_loss_func_over_the_count_trains_with_the_micro_batch_mean_ascent(tmp_path):
    """It used to crash (the ascent passed num_items_in_batch=None); its ascent must be the micro-batch's mean (a ball
    that does not bind, so that the window's count, half of it, would show)."""
    data = DictDataset(ignored_every=3)
    amp = SequentialAMPTrainer(
        model=TinyClassifier(),
        args=tiny_args(tmp_path, gradient_accumulation_steps=2, amp_epsilon=FREE_BALL),
        train_dataset=data,
        compute_loss_func=sum_over_count_loss_func,
    )
    amp.train()
    assert_only_the_right_scale_matches(
        amp.model,
        lambda inner_lr: reference_amp(
            TinyClassifier(), data, steps=3, batch_size=4, grad_accum=2, epsilon=FREE_BALL, inner_lr=inner_lr,
            token_normalised=True,
        ),
    )  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_first_logged_loss_is_the_clean_loss_with_a_real_ball(tmp_path, case):
    """With a ball that moves the weights, the first step still sits at the shared θ₀: `amp_clean_loss` is the plain
    Trainer's loss there (where the micro-batches weigh the same), whatever computes it (a custom `compute_loss` that
    never calls the Trainer's included), and `loss`, the descent's at θ₀ + Δ, is higher."""
    model_cls, kwargs, amp_cls, erm_cls, data_fn = CASES[case]
    common = dict(gradient_accumulation_steps=2, max_steps=1, logging_steps=1)
    amp = amp_cls(
        model=model_cls(), args=tiny_args(tmp_path / "a", amp_epsilon=0.5, **common), train_dataset=data_fn(), **kwargs
    )
    erm = erm_cls(model=model_cls(), args=tiny_args(tmp_path / "e", **common), train_dataset=data_fn(), **kwargs)
    amp.train()
    erm.train()
    first = next(e for e in amp.state.log_history if "loss" in e)
    if case in MEAN_SCALED:
        assert first["amp_clean_loss"] == pytest.approx(logged(erm)[0], rel=1e-6)
    assert first["loss"] > first["amp_clean_loss"] and first["amp_skipped"] == 0


def test_ascent_fraction_with_compute_loss_func_over_the_count(tmp_path):
    """The head's own item count is what the ascent passes: the mean over the head's items, as the reference does."""
    data = DictDataset(n=64, ignored_every=3)
    amp = SequentialAMPTrainer(
        model=TinyClassifier(),
        args=tiny_args(tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=8, amp_epsilon=FREE_BALL,
                       amp_ascent_fraction=0.5),
        train_dataset=data,
        compute_loss_func=sum_over_count_loss_func,
    )  # fmt: skip
    amp.train()
    assert_only_the_right_scale_matches(
        amp.model,
        lambda inner_lr: reference_amp(
            TinyClassifier(), data, steps=3, batch_size=8, grad_accum=2, epsilon=FREE_BALL, inner_lr=inner_lr,
            token_normalised=True, ascent_fraction=0.5,
        ),
    )  # fmt: skip


def test_causal_lm_with_an_unlabelled_micro_batch_logs_the_trainers_loss(tmp_path):
    """A tiny GPT-2 (its loss shifts labels and honours num_items_in_batch), completion-only labels, and one
    micro-batch of an accumulation window with no labelled token: it used to be 'skipped' and to double the log."""
    import datasets

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (16, 10), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt is not trained on
    labels[4:8] = -100  # micro-batch 2: no completion token at all
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    common = dict(gradient_accumulation_steps=2, max_steps=2, optim="adamw_torch", learning_rate=1e-3)
    amp = SequentialAMPTrainer(
        model=tiny_gpt2(), args=tiny_args(tmp_path / "a", amp_epsilon=TINY_BALL, **common), train_dataset=data
    )
    erm = SequentialTrainer(model=tiny_gpt2(), args=tiny_args(tmp_path / "e", **common), train_dataset=data)
    amp.train()
    erm.train()
    assert amp.model_accepts_loss_kwargs
    assert logged(amp) == pytest.approx(logged(erm), rel=1e-5)
    assert sum(e["amp_skipped"] for e in amp.state.log_history if "loss" in e) == 0


# ------------------------------------------------------------------ the logged loss and the amp_* metric names
METRIC_NAMES = {"amp_clean_loss", "amp_delta_norm", "amp_skipped", "amp_steps"}
"""One vocabulary for both APIs: `amp_clean_loss` is the loss at θ; `loss` stays the Trainer's own number."""


def float_count_loss_func(outputs, labels, num_items_in_batch=None):
    """Divides by the count as a Python number: no gradient reaches the count through it."""
    total = nn.functional.cross_entropy(outputs["logits"], labels, ignore_index=-100, reduction="sum")
    return total / float(num_items_in_batch)


def test_logged_loss_with_the_count_used_as_a_number_is_the_plain_trainers(tmp_path):
    """The issue's case: with accumulation 2 the Trainer logged 3.63 and AMPTrainer 7.26. AMP is on (ε = 1e-8), so
    θ + Δ is within float precision of θ and both runs must log the same `loss`."""
    common = dict(gradient_accumulation_steps=2, max_steps=4, logging_steps=1)
    # one ignored label per micro-batch of 4: equal counts, so the mean of the micro-batch means is the Trainer's loss
    kwargs = dict(train_dataset=DictDataset(ignored_every=4), compute_loss_func=float_count_loss_func)
    amp = SequentialAMPTrainer(
        model=TinyClassifier(), args=tiny_args(tmp_path / "a", amp_epsilon=1e-8, **common), **kwargs
    )
    erm = SequentialTrainer(model=TinyClassifier(), args=tiny_args(tmp_path / "e", **common), **kwargs)
    amp.train()
    erm.train()
    assert logged(amp) == pytest.approx(logged(erm), rel=1e-4)
    amp_logs = [e for e in amp.state.log_history if "loss" in e]
    assert all(set(e) >= METRIC_NAMES and "amp_loss" not in e for e in amp_logs), amp_logs[0]
    assert [e["amp_clean_loss"] for e in amp_logs] == pytest.approx(logged(erm), rel=1e-4)


def test_loss_is_the_descent_pass_and_amp_clean_loss_the_loss_at_theta(tmp_path):
    """With a ball that moves the weights, at the shared θ₀ of the first step: `loss` is the Trainer's number for
    its own (descent) pass, at θ₀ + Δ, computed here in plain PyTorch; `amp_clean_loss` is the plain Trainer's loss."""
    data = DictDataset()
    amp = SequentialAMPTrainer(model=TinyClassifier(), args=tiny_args(tmp_path / "a", max_steps=1), train_dataset=data)
    erm = SequentialTrainer(model=TinyClassifier(), args=tiny_args(tmp_path / "e", max_steps=1), train_dataset=data)
    amp.train()
    erm.train()
    first = next(e for e in amp.state.log_history if "loss" in e)
    reference, batch = TinyClassifier(), {"x": data.x[:4], "labels": data.y[:4]}
    with reference_perturbed(list(reference.parameters()), lambda: reference(**batch)["loss"], epsilon=0.5):
        at_theta_plus_delta = float(reference(**batch)["loss"])
    assert first["loss"] == pytest.approx(at_theta_plus_delta, rel=1e-4)  # transformers 4.x rounds logs to 4 digits
    assert first["amp_clean_loss"] == pytest.approx(logged(erm)[0], rel=1e-4)
    assert first["loss"] > first["amp_clean_loss"] and "amp_loss" not in first


def test_the_loop_reports_the_same_metric_names():
    model, data = TinyClassifier(), DictDataset(n=4)
    batch = {"x": data.x, "labels": data.y}
    amp = AMP(model, amp_epsilon=0.05)
    with amp.perturbed(batch):
        model(**batch)["loss"].backward()
    metrics = amp.metrics()
    assert set(metrics) == METRIC_NAMES
    assert metrics["amp_clean_loss"] == pytest.approx(float(TinyClassifier()(**batch)["loss"]))  # the loss at θ
