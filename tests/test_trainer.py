"""AMPTrainer against an independent implementation of amp-spec.md, and against the plain Trainer."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    FREE_BALL,
    DictDataset,
    MeanLossWithKwargs,
    OverflowsWhenPushed,
    SequentialAMPTrainer,
    SequentialTrainer,
    TinyClassifier,
    TokenNormalisedClassifier,
    assert_only_the_right_scale_matches,
    assert_params_close,
    assert_params_equal,
    assert_params_far,
    assert_statistics_of_the_clean_pass,
    params_of,
    reference_amp,
    statistics_under_each_policy,
    tiny_args,
)
from torch import nn
from transformers import Trainer, TrainingArguments

from amp_hf import AMPMixin, AMPTrainer
from amp_hf.micro_batch import METRIC_NAMES as METRIC_KEYS


def train(trainer_cls, model, tmp_path, dataset=None, **overrides):
    trainer = trainer_cls(model=model, args=tiny_args(tmp_path, **overrides), train_dataset=dataset or DictDataset())
    trainer.train()
    return trainer


# ------------------------------------------------------------------------------------------ exactly the spec
@pytest.mark.parametrize(
    ("norm", "inner_steps", "epsilon", "grad_accum"),
    [
        ("tensor", 1, 0.5, 1),  # the defaults
        ("tensor", 1, 0.05, 2),  # projection binds; accumulation
        ("tensor", 3, 0.05, 2),
        ("global", 1, 0.05, 1),
        ("global", 3, 0.05, 2),
        ("relative", 1, 0.02, 2),
        ("relative", 3, 0.02, 1),
    ],
)
def test_matches_reference_implementation(tmp_path, norm, inner_steps, epsilon, grad_accum):
    model, data = TinyClassifier(), DictDataset()
    trainer = train(
        SequentialAMPTrainer,
        model,
        tmp_path,
        data,
        amp_norm=norm,
        amp_inner_steps=inner_steps,
        amp_epsilon=epsilon,
        amp_inner_lr=2.0,
        gradient_accumulation_steps=grad_accum,
        max_steps=3,
    )
    expected = reference_amp(
        TinyClassifier(),
        data,
        steps=3,
        batch_size=4,
        grad_accum=grad_accum,
        epsilon=epsilon,
        inner_lr=2.0,
        inner_steps=inner_steps,
        norm=norm,
    )
    assert_params_close(trainer.model, expected)
    # ...and AMP really moved the weights away from plain ERM, beyond the tolerance: the comparison is not vacuous.
    erm = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, grad_accum=grad_accum, epsilon=0.0)
    assert_params_far(trainer.model, erm, what="AMP vs ERM")


def test_projection_binds_in_the_reference_comparison(tmp_path):
    trainer = train(SequentialAMPTrainer, TinyClassifier(), tmp_path, amp_epsilon=0.05, amp_norm="global")
    norms = [e["amp_delta_norm"] for e in trainer.state.log_history if "amp_delta_norm" in e]
    assert norms and all(n == pytest.approx(0.05, rel=1e-5) for n in norms)


def test_default_settings_with_clipping_match_reference(tmp_path):
    model, data = TinyClassifier(), DictDataset()
    trainer = train(SequentialAMPTrainer, model, tmp_path, data, max_grad_norm=0.5, max_steps=4)
    expected = reference_amp(TinyClassifier(), data, steps=4, batch_size=4, max_grad_norm=0.5)
    assert_params_close(trainer.model, expected)
    # not vacuous: the clipping binds, and AMP is not ERM
    unclipped = reference_amp(TinyClassifier(), data, steps=4, batch_size=4)
    assert_params_far(trainer.model, unclipped, what="clipped vs unclipped")
    erm = reference_amp(TinyClassifier(), data, steps=4, batch_size=4, max_grad_norm=0.5, epsilon=0.0)
    assert_params_far(trainer.model, erm, what="AMP vs ERM")


def test_token_normalised_loss_does_not_change_the_ascent(tmp_path):
    """num_items_in_batch normalises the descent pass only; the ascent uses each micro-batch's own mean loss. With a
    ball that does not bind, an ascent on the window's count (half the micro-batch mean here) lands elsewhere."""
    data = DictDataset(ignored_every=3)
    trainer = train(
        SequentialAMPTrainer,
        TokenNormalisedClassifier(),
        tmp_path,
        data,
        gradient_accumulation_steps=2,
        amp_epsilon=FREE_BALL,
    )
    assert trainer.model_accepts_loss_kwargs
    assert_only_the_right_scale_matches(
        trainer.model,
        lambda inner_lr: reference_amp(
            TokenNormalisedClassifier(), data, steps=3, batch_size=4, grad_accum=2, epsilon=FREE_BALL,
            inner_lr=inner_lr, token_normalised=True,
        ),
    )  # fmt: skip


def test_count_ignoring_model_ascends_on_its_mean_loss(tmp_path):
    """A model that accepts `num_items_in_batch` and returns its mean anyway (BERT's case): the ascent is that mean,
    unscaled by any count. (The Trainer does not divide such a loss by the accumulation steps: its descent is the sum
    of the micro-batch means, which the reference reproduces with twice the learning rate at GA 2.)"""
    data = DictDataset(ignored_every=3)
    trainer = train(
        SequentialAMPTrainer, MeanLossWithKwargs(), tmp_path, data, gradient_accumulation_steps=2, amp_epsilon=FREE_BALL
    )
    assert trainer.model_accepts_loss_kwargs
    assert_only_the_right_scale_matches(
        trainer.model,
        lambda inner_lr: reference_amp(
            MeanLossWithKwargs(), data, steps=3, batch_size=4, grad_accum=2, lr=0.2, epsilon=FREE_BALL,
            inner_lr=inner_lr,
        ),
    )  # fmt: skip


@pytest.mark.parametrize("model_cls", [TinyClassifier, TokenNormalisedClassifier])
def test_logged_clean_loss_is_the_plain_trainers_loss_at_theta(tmp_path, model_cls):
    """On the first step both runs sit at the same θ: AMP's `amp_clean_loss` equals the plain Trainer's `loss` (one
    ignored label per micro-batch of 4: equal item counts), and `loss`, the descent's at θ + Δ, is higher."""
    data = DictDataset(ignored_every=4)
    common = dict(gradient_accumulation_steps=2, max_steps=1)
    amp = train(SequentialAMPTrainer, model_cls(), tmp_path / "amp", data, **common)
    erm = train(SequentialTrainer, model_cls(), tmp_path / "erm", data, **common)
    assert amp.state.log_history[0]["amp_clean_loss"] == pytest.approx(erm.state.log_history[0]["loss"], rel=1e-6)
    assert amp.state.log_history[0]["loss"] > amp.state.log_history[0]["amp_clean_loss"]


# --------------------------------------------------------------------------------------------- AMP off
@pytest.mark.parametrize("off", [{"amp_inner_steps": 0}, {"amp_epsilon": 0.0}])
def test_amp_off_is_the_plain_trainer_bit_for_bit(tmp_path, off):
    calls = []

    class Counting(AMPTrainer):
        def compute_loss(self, *args, **kwargs):
            calls.append(1)
            return super().compute_loss(*args, **kwargs)

    amp = train(Counting, TinyClassifier(), tmp_path / "amp", gradient_accumulation_steps=2, **off)
    erm = train(Trainer, TinyClassifier(), tmp_path / "erm", gradient_accumulation_steps=2)
    assert_params_equal(amp.model, erm.model)
    assert len(calls) == 3 * 2  # one pass per micro-batch: no extra pass at all
    assert not any("amp_clean_loss" in e for e in amp.state.log_history)


def test_interval_and_start_step_choose_the_amp_steps(tmp_path):
    passes_per_step = []

    class Counting(AMPTrainer):
        def training_step(self, *args, **kwargs):
            passes_per_step.append(0)
            return super().training_step(*args, **kwargs)

        def compute_loss(self, *args, **kwargs):
            passes_per_step[-1] += 1
            return super().compute_loss(*args, **kwargs)

    train(Counting, TinyClassifier(), tmp_path, max_steps=7, amp_interval=2, amp_start_step=2, amp_inner_steps=2)
    # steps 0, 1: ERM (before start); then AMP on 2, 4, 6 with K + 1 = 3 passes; ERM on 3, 5.
    assert passes_per_step == [1, 1, 3, 1, 3, 1, 3]


def test_theta_is_saved_into_buffers_allocated_once_and_freed_after_training(tmp_path):
    storage = []

    class Watching(AMPTrainer):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            storage.append([b.data_ptr() for b in self._amp._theta.buffers])
            return loss

    trainer = train(Watching, TinyClassifier(), tmp_path, max_steps=3)
    assert len(storage) == 3 and storage[0] == storage[1] == storage[2]
    assert trainer._amp._theta.buffers is None  # released when train() returns


# --------------------------------------------------------------------------------------- exact restore
def test_exception_in_descent_pass_leaves_weights_intact(tmp_path):
    class FailingDescent(AMPTrainer):
        calls = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            FailingDescent.calls += 1
            if FailingDescent.calls == 2:  # pass 1 is the clean ascent, pass 2 the descent at θ + Δ
                raise RuntimeError("boom in the descent pass")
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = TinyClassifier()
    before = params_of(model)
    trainer = FailingDescent(model=model, args=tiny_args(tmp_path), train_dataset=DictDataset())
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_exception_in_intermediate_ascent_leaves_weights_intact(tmp_path):
    class FailingAscent(AMPTrainer):
        calls = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            FailingAscent.calls += 1
            if FailingAscent.calls == 2:  # with K = 3, pass 2 is an ascent pass at θ + Δ₁
                raise RuntimeError("boom in the ascent")
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = TinyClassifier()
    before = params_of(model)
    trainer = FailingAscent(model=model, args=tiny_args(tmp_path, amp_inner_steps=3), train_dataset=DictDataset())
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


# ----------------------------------------------------------------------------------------- non-finite
def test_non_finite_ascent_trains_unperturbed_and_is_counted(tmp_path):
    class PoisonedAscent(AMPTrainer):
        """The clean (ascent) pass of the first micro-batch returns NaN; the descent pass is untouched."""

        calls = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            PoisonedAscent.calls += 1
            return loss * float("nan") if PoisonedAscent.calls == 1 else loss

    data = DictDataset()
    amp = train(PoisonedAscent, TinyClassifier(), tmp_path / "amp", data, max_steps=1)
    erm = train(Trainer, TinyClassifier(), tmp_path / "erm", data, max_steps=1)
    assert_params_equal(amp.model, erm.model)  # the skipped step is exactly the ERM step
    assert all(torch.isfinite(p).all() for p in amp.model.parameters())
    assert amp.state.log_history[0]["amp_skipped"] == 1


def test_fp16_ascent_is_unscaled_and_overflow_is_skipped(tmp_path):
    """A GradScaler scales the descent's .grad, never the ascent: Δ must not depend on the loss scale."""
    batch = {"x": torch.randn(4, 6), "labels": torch.tensor([0, 1, 2, 0])}

    def one_step(scale):
        args = tiny_args(tmp_path, amp_epsilon=FREE_BALL)  # a ball that binds would clip a scaled Δ back
        trainer = AMPTrainer(model=TinyClassifier(), args=args, train_dataset=DictDataset())
        trainer.current_gradient_accumulation_steps = 1  # set by train(); here we call one step by hand
        if scale is not None:
            trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        loss = trainer.training_step(trainer.model, dict(batch))
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        return trainer, loss, grads

    plain, loss, grads = one_step(None)
    scaled, scaled_loss, scaled_grads = one_step(2.0**12)
    torch.testing.assert_close(scaled_loss, loss)
    for g, sg in zip(grads, scaled_grads):
        torch.testing.assert_close(sg / 2.0**12, g)  # same Δ, hence the same descent gradient, times the scale
    assert scaled._amp.window.perturbed == plain._amp.window.perturbed == 1
    torch.testing.assert_close(scaled._amp.window.delta_sum, plain._amp.window.delta_sum)  # the same Δ

    overflow, _, _ = one_step(float("inf"))
    assert overflow._amp.window.skipped == 1  # counted as skipped
    assert all(torch.isfinite(p).all() for p in overflow.model.parameters())


def test_fp16_grad_scaler_end_to_end(tmp_path):
    """The whole step with a GradScaler in accelerate's path: scaler.step unscales the descent gradient and skips
    overflowed steps. (On CPU accelerate makes no scaler, so one is put where accelerate keeps it, before train().)"""

    def run(scale, **overrides):
        trainer = SequentialAMPTrainer(  # a ball that does not bind: a Δ on the scaled loss would not be clipped back
            model=TinyClassifier(), args=tiny_args(tmp_path, amp_epsilon=FREE_BALL, **overrides),
            train_dataset=DictDataset(),
        )  # fmt: skip
        if scale is not None:
            trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=1000)
        trainer.train()
        return trainer

    plain, scaled = run(None), run(2.0**14)
    assert scaled.accelerator.scaler.get_scale() == 2.0**14  # no overflow, no skipped step
    assert_params_close(scaled.model, plain.model, atol=1e-7)  # power-of-two scaling is exact: same run
    expected = reference_amp(TinyClassifier(), DictDataset(), steps=3, batch_size=4, epsilon=FREE_BALL)
    assert_params_close(scaled.model, expected)  # and that run is AMP's
    erm = reference_amp(TinyClassifier(), DictDataset(), steps=3, batch_size=4, epsilon=0.0)
    assert_params_far(scaled.model, erm, what="AMP vs ERM")

    theta = params_of(TinyClassifier())
    overflow = run(float("inf"), max_steps=1)
    assert overflow.state.log_history[0]["amp_skipped"] == 1  # the ascent overflowed: counted, not applied
    for name, p in overflow.model.named_parameters():  # and the scaler skipped the optimizer step
        assert torch.equal(p, theta[name]), name


# ------------------------------------------------------------------------------------------- BatchNorm
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_batchnorm_running_stats_are_the_clean_passs_at_theta(tmp_path, fraction):
    """One update per micro-batch, by the clean pass on the head at θ; not the descent's (`Trainer.training_step`'s
    forward) on the whole micro-batch at θ + Δ (running_stats.py: the measured policy)."""
    data = DictDataset()
    model = TinyClassifier(batchnorm=True)
    policies = statistics_under_each_policy(model, {"x": data.x[:4], "labels": data.y[:4]}, fraction, epsilon=0.5)
    train(SequentialAMPTrainer, model, tmp_path, data, max_steps=1, amp_ascent_fraction=fraction)
    assert_statistics_of_the_clean_pass(model, policies)


# -------------------------------------------------------------------------------- which tensors move
def test_frozen_and_excluded_parameters_are_not_perturbed(tmp_path):
    seen_in_descent = {}

    class Spy(AMPTrainer):
        calls = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            Spy.calls += 1
            if Spy.calls == 2:  # the descent pass of the first micro-batch: weights are at θ + Δ
                seen_in_descent.update(params_of(model))
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = TinyClassifier()
    model.fc1.weight.requires_grad_(False)
    theta = params_of(model)
    trainer = train(Spy, model, tmp_path, max_steps=1, amp_exclude=[r"\.bias$"])
    assert [n for n, _ in trainer.amp_parameters(model)] == ["fc2.weight"]
    assert torch.equal(seen_in_descent["fc1.weight"], theta["fc1.weight"])  # frozen
    assert torch.equal(seen_in_descent["fc1.bias"], theta["fc1.bias"])  # excluded
    assert torch.equal(seen_in_descent["fc2.bias"], theta["fc2.bias"])  # excluded
    assert not torch.equal(seen_in_descent["fc2.weight"], theta["fc2.weight"])  # perturbed
    assert torch.equal(model.fc1.weight, theta["fc1.weight"])  # and the frozen one never trained


def test_reference_with_exclusion(tmp_path):
    data = DictDataset()
    trainer = train(SequentialAMPTrainer, TinyClassifier(), tmp_path, data, amp_exclude=["bias"], amp_epsilon=0.05)
    expected = reference_amp(
        TinyClassifier(), data, steps=3, batch_size=4, epsilon=0.05, perturb=lambda n: "bias" not in n
    )
    assert_params_close(trainer.model, expected)
    # not vacuous: perturbing the biases too lands elsewhere
    everything = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, epsilon=0.05)
    assert_params_far(trainer.model, everything, what="with vs without the exclusion")


# ---------------------------------------------------------------------------------------------- logging
def test_logged_metrics_reach_log_history_and_callbacks(tmp_path):
    from transformers import TrainerCallback

    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs or {}))

    trainer = AMPTrainer(
        model=TinyClassifier(),
        args=tiny_args(tmp_path, max_steps=4, logging_steps=2, gradient_accumulation_steps=2),
        train_dataset=DictDataset(),
        callbacks=[Recorder()],
    )
    trainer.train()
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(train_logs) == 2
    for entry in train_logs:
        assert {"loss", "amp_clean_loss", "amp_delta_norm", "amp_skipped"} <= entry.keys()
        assert entry["amp_skipped"] == 0
        assert 0 < entry["amp_delta_norm"] <= 0.5 * len(list(trainer.model.parameters())) ** 0.5
        assert entry["loss"] > entry["amp_clean_loss"]  # the ascent went uphill
    assert any("amp_clean_loss" in logs for logs in seen)


# ----------------------------------------------------------------------------------- Trainer's loss path
def test_label_smoother_and_compute_loss_func_go_through_the_trainer_path(tmp_path):
    data = DictDataset()

    def custom_loss(outputs, labels, num_items_in_batch=None):
        return nn.functional.cross_entropy(outputs["logits"], labels) * 2.0

    for extra in ({"label_smoothing_factor": 0.1}, {}):
        kwargs = {} if extra else {"compute_loss_func": custom_loss}
        args_amp = tiny_args(tmp_path / "a", max_steps=1, **extra)
        args_erm = tiny_args(tmp_path / "e", max_steps=1, **extra)
        models = [TinyClassifier(), TinyClassifier()]
        for model in models:
            model.config = SimpleNamespace()  # the label smoother looks at model.config
        amp = SequentialAMPTrainer(model=models[0], args=args_amp, train_dataset=data, **kwargs)
        erm = SequentialTrainer(model=models[1], args=args_erm, train_dataset=data, **kwargs)
        amp.train()
        erm.train()
        # the same loss function in the clean pass: the clean loss is the plain loss at the shared starting point
        assert amp.state.log_history[0]["amp_clean_loss"] == pytest.approx(erm.state.log_history[0]["loss"], rel=1e-6)


def test_plain_training_arguments_use_the_defaults_and_say_so(tmp_path, caplog):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, use_cpu=True, report_to="none", logging_steps=1, save_strategy="no"
    )
    with caplog.at_level(logging.WARNING, logger="amp_hf.trainer"):
        trainer = AMPTrainer(model=TinyClassifier(), args=args, train_dataset=DictDataset())
    warned = [r.getMessage() for r in caplog.records if "the reference defaults apply" in r.getMessage()]
    assert len(warned) == 1
    assert "CNNs trained with SGD" in warned[0] and "vision transformers" in warned[0] and "Choosing ε" in warned[0]
    assert trainer.amp_config.epsilon == 0.5 and trainer.amp_config.norm == "tensor"
    with caplog.at_level(logging.WARNING, logger="amp_hf.trainer"):
        trainer.train()
    assert sum("the reference defaults apply" in r.getMessage() for r in caplog.records) == 1  # once, not per train()
    assert "amp_clean_loss" in trainer.state.log_history[0]


# --------------------------------------------------------------------------------- refused back-ends
@pytest.mark.parametrize("flag", ["is_fsdp_enabled"])  # FSDP1 here; DeepSpeed ZeRO-3: test_deepspeed.py
def test_unsupported_backends_are_refused_at_construction(tmp_path, flag):
    class PretendBackend(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            setattr(self, flag, True)

    class AMPOnPretendBackend(AMPMixin, PretendBackend):
        pass

    with pytest.raises(ValueError, match="does not support"):
        AMPOnPretendBackend(model=TinyClassifier(), args=tiny_args(tmp_path), train_dataset=DictDataset())
    # AMP off is the plain Trainer and is allowed anywhere
    AMPOnPretendBackend(model=TinyClassifier(), args=tiny_args(tmp_path, amp_epsilon=0.0), train_dataset=DictDataset())


def test_bad_arguments_changed_after_construction_fail_before_training(tmp_path):
    trainer = AMPTrainer(model=TinyClassifier(), args=tiny_args(tmp_path), train_dataset=DictDataset())
    trainer.args.amp_norm = "l2"
    before = params_of(trainer.model)
    with pytest.raises(ValueError, match="amp_norm"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


# ------------------------------------------------------------------- the ASAM ball and the ascent fraction
@pytest.mark.parametrize(
    ("norm", "inner_steps", "epsilon", "inner_lr", "grad_accum", "fraction"),
    [
        ("elementwise", 1, 0.05, 100.0, 1, 1.0),  # ASAM: a large ζ puts Δ on the sphere
        ("elementwise", 2, 0.05, 2.0, 2, 1.0),  # AMP's raw-gradient ascent in the ASAM ball
        ("elementwise", 1, 1e3, 1.0, 1, 1.0),  # the ball does not bind
        ("tensor", 1, 0.05, 2.0, 2, 0.25),
        ("tensor", 2, 0.05, 2.0, 1, 0.5),
        ("global", 1, 0.05, 2.0, 2, 0.5),
        ("relative", 2, 0.02, 2.0, 2, 0.25),
        ("elementwise", 2, 0.05, 100.0, 2, 0.5),
    ],
)
def test_elementwise_ball_and_ascent_fraction_match_reference(
    tmp_path, norm, inner_steps, epsilon, inner_lr, grad_accum, fraction
):
    data = DictDataset()
    settings = dict(amp_norm=norm, amp_inner_steps=inner_steps, amp_epsilon=epsilon, amp_inner_lr=inner_lr)
    trainer = train(
        SequentialAMPTrainer, TinyClassifier(), tmp_path, data, gradient_accumulation_steps=grad_accum,
        amp_ascent_fraction=fraction, **settings,
    )  # fmt: skip
    reference = dict(norm=norm, inner_steps=inner_steps, epsilon=epsilon, inner_lr=inner_lr, grad_accum=grad_accum)
    expected = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, ascent_fraction=fraction, **reference)
    assert_params_close(trainer.model, expected)
    # not vacuous: the whole-batch ascent (or the plain ERM step) lands elsewhere
    other = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, **{**reference, "epsilon": 0.0})
    if fraction < 1:
        other = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, **reference)
    assert_params_far(trainer.model, other, what="vs the whole-batch ascent" if fraction < 1 else "vs ERM")


def test_ascent_fraction_with_token_normalised_loss_takes_the_heads_mean(tmp_path):
    data = DictDataset(n=64, ignored_every=5)
    trainer = train(
        SequentialAMPTrainer, TokenNormalisedClassifier(), tmp_path, data, gradient_accumulation_steps=2,
        per_device_train_batch_size=8, amp_epsilon=FREE_BALL, amp_ascent_fraction=0.5,
    )  # fmt: skip
    assert_only_the_right_scale_matches(
        trainer.model,
        lambda inner_lr: reference_amp(
            TokenNormalisedClassifier(), data, steps=3, batch_size=8, grad_accum=2, epsilon=FREE_BALL,
            inner_lr=inner_lr, token_normalised=True, ascent_fraction=0.5,
        ),
    )  # fmt: skip


def test_elementwise_delta_lands_on_its_ball(tmp_path):
    trainer = train(
        SequentialAMPTrainer, TinyClassifier(), tmp_path, amp_norm="elementwise", amp_epsilon=0.05, amp_inner_lr=100.0
    )
    norms = [e["amp_delta_norm"] for e in trainer.state.log_history if "amp_delta_norm" in e]
    assert norms and all(n == pytest.approx(0.05, rel=1e-5) for n in norms)  # ‖Δ/T‖ = ε: on the sphere


# ------------------------------------------------------------------------- what real scripts do to AMP
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_non_finite_loss_at_the_perturbed_weights_never_reaches_them(tmp_path, inner_steps, caplog):
    with caplog.at_level(logging.WARNING, logger="amp_hf.trainer"):
        trainer = train(SequentialAMPTrainer, OverflowsWhenPushed(), tmp_path, amp_inner_steps=inner_steps)
    erm = train(SequentialTrainer, OverflowsWhenPushed(), tmp_path / "erm")
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in erm.model.parameters())  # the plain Trainer stays finite too
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert sum(e["amp_skipped"] for e in logs) >= 1
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    if inner_steps == 1:  # the first step fell back to θ: exactly the plain Trainer's first step
        assert sum("was not finite" in r.getMessage() for r in caplog.records) == 1  # warned once
        assert logs[0]["loss"] == pytest.approx(erm.state.log_history[0]["loss"], rel=1e-6)
        assert trainer.model.s.item() == pytest.approx(erm.model.s.item())


def test_perturbed_set_follows_requires_grad_during_training(tmp_path):
    """Gradual unfreezing: fc1 frozen at step 1, fc2.bias unfrozen at step 1; AMP follows both."""
    from transformers import TrainerCallback

    perturbed_at_step: dict[int, set[str]] = {}

    class Unfreeze(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                model.fc1.weight.requires_grad_(False)
                model.fc2.bias.requires_grad_(True)

    class Spy(SequentialAMPTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.theta, self.calls = params_of(model), 0
            return super().training_step(model, inputs, num_items_in_batch)

        def compute_loss(self, model, inputs, *args, **kwargs):
            self.calls += 1
            if self.calls == 2:  # the descent pass (K = 1): which weights sit away from θ?
                moved = {n for n, p in model.named_parameters() if not torch.equal(p, self.theta[n])}
                perturbed_at_step[self.state.global_step] = moved
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = TinyClassifier()
    model.fc2.bias.requires_grad_(False)
    trainer = Spy(
        model=model, args=tiny_args(tmp_path, max_steps=3), train_dataset=DictDataset(), callbacks=[Unfreeze()]
    )
    trainer.train()  # used to raise "One of the differentiated Tensors does not require grad"
    assert perturbed_at_step[0] == {"fc1.weight", "fc1.bias", "fc2.weight"}
    assert perturbed_at_step[1] == perturbed_at_step[2] == {"fc1.bias", "fc2.weight", "fc2.bias"}


@pytest.mark.parametrize("optim", ["lomo", "adalomo", "galore_adamw_layerwise", "apollo_adamw_layerwise"])
def test_optimizers_stepping_inside_backward_are_refused_at_construction(tmp_path, optim):
    with pytest.raises(ValueError, match=f"does not support optim='{optim}'.*during backward"):
        AMPTrainer(model=TinyClassifier(), args=tiny_args(tmp_path, optim=optim), train_dataset=DictDataset())
    AMPTrainer(  # plain training with them stays the Trainer's business
        model=TinyClassifier(), args=tiny_args(tmp_path, optim=optim, amp_inner_steps=0), train_dataset=DictDataset()
    )


def test_every_training_log_has_the_amp_keys(tmp_path):
    """Windows without an AMP step (before amp_start_step, between amp_interval steps) log them too: no gaps."""
    trainer = train(
        AMPTrainer, TinyClassifier(), tmp_path, max_steps=7, logging_steps=1, amp_start_step=2, amp_interval=3
    )
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 7
    assert all(set(METRIC_KEYS) <= e.keys() for e in logs)
    assert [e["amp_steps"] for e in logs] == [0, 0, 1, 0, 0, 1, 0]
    for e in logs:
        if e["amp_steps"] == 0:
            assert e["amp_clean_loss"] == e["loss"] and e["amp_delta_norm"] == 0.0 and e["amp_skipped"] == 0
        else:
            assert e["loss"] > e["amp_clean_loss"] and e["amp_delta_norm"] > 0
