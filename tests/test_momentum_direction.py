"""amp_direction='momentum' (Momentum-SAM's direction, no ascent pass) in both APIs, against the independent
plain-PyTorch reference `helpers.reference_momentum_amp` and the plain Trainer, and its refusals. Two processes: DDP in
`ddp_worker.py` and `loop_worker.py`, FSDP2 in `fsdp_worker.py` (their launches)."""

from __future__ import annotations

import pytest
import torch
from accelerate_loop import train_with_amp
from helpers import (
    DictDataset,
    MomentumAMPTrainer,
    MomentumTrainer,
    SequentialAMPTrainer,
    TinyClassifier,
    assert_params_close,
    assert_params_equal,
    assert_params_far,
    params_of,
    reference_momentum_amp,
    tiny_args,
)
from test_loop import AutocastClassifier

from amp_hf import AMP, AMPConfig, AMPTrainingArguments
from amp_hf import trainer as trainer_module

MOMENTUM = {"amp_direction": "momentum"}
"""With `MomentumAMPTrainer`: SGD with momentum 0.9 at tiny_args' constant lr 0.1, and the momentum direction."""


def train(trainer_cls, model, tmp_path, dataset=None, **overrides):
    trainer = trainer_cls(model=model, args=tiny_args(tmp_path, **overrides), train_dataset=dataset or DictDataset())
    trainer.train()
    return trainer


class CountingPasses(MomentumAMPTrainer):
    def compute_loss(self, *args, **kwargs):
        self.passes = getattr(self, "passes", 0) + 1
        return super().compute_loss(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- the update
@pytest.mark.parametrize(
    ("norm", "epsilon", "grad_accum"),
    [("global", 0.3, 1), ("tensor", 0.1, 2), ("relative", 0.02, 1), ("elementwise", 0.3, 2)],
)
def test_trainer_matches_the_reference(tmp_path, norm, epsilon, grad_accum):
    """Δ = −m on the sphere of each ball, one pass per micro-batch at θ + Δ, θ back, then the optimizer's step."""
    trainer = train(
        CountingPasses, TinyClassifier(), tmp_path, amp_norm=norm, amp_epsilon=epsilon, max_steps=4,
        gradient_accumulation_steps=grad_accum, **MOMENTUM,
    )  # fmt: skip
    settings = dict(steps=4, batch_size=4, grad_accum=grad_accum, norm=norm)
    assert_params_close(
        trainer.model, reference_momentum_amp(TinyClassifier(), DictDataset(), epsilon=epsilon, **settings)
    )
    erm = reference_momentum_amp(TinyClassifier(), DictDataset(), epsilon=0.0, **settings)
    assert_params_far(trainer.model, erm, what="momentum direction vs ERM")
    assert trainer.passes == 4 * grad_accum  # no ascent pass
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["amp_steps"] for e in logs] == [0, 1, 1, 1]  # Δ = 0 at the first step: no first moment yet
    assert not any("amp_clean_loss" in e for e in logs)  # no clean pass to report
    if norm in ("global", "elementwise"):  # on the sphere: ‖Δ‖ (‖Δ/T‖) = ε, whatever the momentum's length
        assert all(e["amp_delta_norm"] == pytest.approx(epsilon, rel=1e-5) for e in logs[1:])


def test_adamw_reads_exp_avg(tmp_path):
    trainer = train(
        SequentialAMPTrainer, TinyClassifier(), tmp_path, optim="adamw_torch", learning_rate=0.01, max_steps=4,
        amp_direction="momentum", amp_norm="global", amp_epsilon=0.3,
    )  # fmt: skip
    expected = reference_momentum_amp(
        TinyClassifier(), DictDataset(), steps=4, batch_size=4, lr=0.01, epsilon=0.3, adamw=True
    )
    assert_params_close(trainer.model, expected)
    erm = reference_momentum_amp(TinyClassifier(), DictDataset(), steps=4, batch_size=4, lr=0.01, epsilon=0, adamw=True)
    assert_params_far(trainer.model, erm, what="momentum direction vs ERM (AdamW)")


def test_the_one_pass_updates_the_running_statistics_and_start_step_keeps_delta_zero(tmp_path):
    """BatchNorm's statistics are the pass's, at θ + Δ (there is no other pass); before amp_start_step, Δ = 0."""
    model = TinyClassifier(batchnorm=True)
    trainer = train(
        MomentumAMPTrainer, model, tmp_path, amp_norm="global", amp_epsilon=0.3, amp_start_step=2, max_steps=4,
        **MOMENTUM,
    )  # fmt: skip
    expected = reference_momentum_amp(
        TinyClassifier(batchnorm=True), DictDataset(), steps=4, batch_size=4, epsilon=0.3, start_step=2
    )
    assert_params_close(trainer.model, expected)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(trainer.model.norm, name), getattr(expected.norm, name))
    assert [e["amp_steps"] for e in trainer.state.log_history if "loss" in e] == [0, 0, 1, 1]
    from_step_1 = reference_momentum_amp(
        TinyClassifier(batchnorm=True), DictDataset(), steps=4, batch_size=4, epsilon=0.3
    )
    assert_params_far(trainer.model, from_step_1, what="start_step 2 vs 0")


def test_epsilon_zero_and_the_first_step_are_the_plain_trainer_bit_for_bit(tmp_path):
    for overrides in ({"amp_epsilon": 0.0, "max_steps": 3}, {"amp_epsilon": 0.5, "max_steps": 1}):
        common = dict(gradient_accumulation_steps=2, **overrides)
        amp = train(CountingPasses, TinyClassifier(), tmp_path / "amp", **MOMENTUM, **common)
        erm = train(MomentumTrainer, TinyClassifier(), tmp_path / "erm", **common)
        assert_params_equal(amp.model, erm.model)
        assert amp.passes == 2 * overrides["max_steps"]


# ------------------------------------------------------------------------------------------- the loop API
@pytest.mark.parametrize(("pass_optimizer", "grad_accum", "step_inside"), [(False, 1, False), (True, 2, True)])
def test_loop_matches_the_reference(accelerator_of, pass_optimizer, grad_accum, step_inside):
    """The optimizer given, or found by the step hooks (from its first step, when its state begins anyway)."""
    data = DictDataset(n=32)
    trained, amp, results = train_with_amp(
        TinyClassifier(), data, accelerator_of(gradient_accumulation_steps=grad_accum), steps=4, momentum=0.9,
        pass_optimizer=pass_optimizer, step_inside=step_inside, amp_direction="momentum", amp_norm="tensor",
        amp_epsilon=0.1,
    )  # fmt: skip
    expected = reference_momentum_amp(
        TinyClassifier(), data, steps=4, batch_size=4, grad_accum=grad_accum, epsilon=0.1, norm="tensor"
    )
    assert_params_close(trained, expected)
    assert [r.moved for r in results] == [False] * grad_accum + [True] * 3 * grad_accum
    assert all(r.clean_loss is None for r in results)
    metrics = amp.metrics()
    assert "amp_clean_loss" not in metrics and metrics["amp_steps"] == 3, metrics


def test_loop_bf16_autocast_and_fp16_scaler(accelerator_of):
    """bf16: the pass autocast as accelerate's forward is; fp16: the GradScaler's scale never touches Δ."""
    data = DictDataset(n=32)
    settings = dict(steps=3, momentum=0.9, amp_direction="momentum", amp_norm="global", amp_epsilon=0.3)
    trained, _, _ = train_with_amp(TinyClassifier(), data, accelerator_of(mixed_precision="bf16"), **settings)
    expected = reference_momentum_amp(AutocastClassifier(), data, steps=3, batch_size=4, epsilon=0.3)
    assert_params_close(trained, expected, atol=1e-6)

    accelerator = accelerator_of()
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trained, _, _ = train_with_amp(TinyClassifier(), data, accelerator, step_inside=True, **settings)
    assert_params_close(trained, reference_momentum_amp(TinyClassifier(), data, steps=3, batch_size=4, epsilon=0.3))


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"amp_inner_steps": 2}, "amp_inner_steps must be 1 .* with amp_direction='momentum'"),
        ({"amp_ascent_fraction": 0.5}, "amp_ascent_fraction must be 1 with amp_direction='momentum'"),
        ({"amp_inner_lr": 100.0}, "amp_inner_lr must be 1 with amp_direction='momentum'"),
        ({"amp_direction": "nesterov"}, "amp_direction must be one of 'gradient', 'momentum'"),
    ],
)
def test_settings_without_meaning_are_refused_naming_the_field(tmp_path, settings, message):
    settings = {"amp_direction": "momentum", **settings}
    with pytest.raises(ValueError, match=message):
        AMPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **settings)
    with pytest.raises(ValueError, match=message):
        AMP(TinyClassifier(), **settings)
    with pytest.raises(ValueError, match=message):  # a preset's values count too: sam sets amp_inner_lr=100
        AMPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", amp_preset="sam", **settings)
    assert not AMPConfig(direction="momentum", inner_steps=0).enabled  # K = 0 stays the off switch


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "SGD with momentum=0 keeps no momentum_buffer"),
        ({"optim": "adagrad"}, "Adagrad keeps no first moment"),
        ({"optim": "adafactor", "learning_rate": 1e-3}, "Adafactor without beta1"),
    ],
)
def test_trainer_refuses_an_optimizer_without_a_first_moment_before_it_trains(tmp_path, overrides, message):
    model = TinyClassifier()
    before = params_of(model)
    with pytest.raises(ValueError, match=f"{message}.*Use an optimizer with a first moment: SGD with momentum > 0"):
        train(SequentialAMPTrainer, model, tmp_path, **{**MOMENTUM, **overrides})
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_loop_refuses_an_optimizer_without_a_first_moment(accelerator_of):
    data = DictDataset(n=32)
    with pytest.raises(ValueError, match="SGD with momentum=0 keeps no momentum_buffer"):  # given: at construction
        train_with_amp(TinyClassifier(), data, accelerator_of(), steps=2, pass_optimizer=True, amp_direction="momentum")
    with pytest.raises(ValueError, match="SGD with momentum=0 keeps no momentum_buffer"):  # found: at its first step
        train_with_amp(TinyClassifier(), data, accelerator_of(), steps=2, amp_direction="momentum")

    class KeepsACount(torch.optim.SGD):  # an optimizer this library does not know, whose state has no first moment
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["count"] = self.state[p].get("count", 0) + 1
            return super().step(closure)

    model = TinyClassifier()
    amp = AMP(model, optimizer=KeepsACount(model.parameters(), lr=0.1, momentum=0.9), amp_direction="momentum")
    amp.optimizer.step()
    batch = {"x": data.x[:4], "labels": data.y[:4]}
    with pytest.raises(ValueError, match=r"KeepsACount's state holds \['count'\]"), amp.perturbed(batch):
        pass


def test_loop_refuses_to_run_on_when_no_optimizer_step_was_seen():
    """An optimizer step passed (a block exited) but no optimizer holding the parameters stepped: Δ would stay 0."""
    model, data = TinyClassifier(), DictDataset(n=8)
    amp = AMP(model, amp_direction="momentum")
    batch = {"x": data.x[:4], "labels": data.y[:4]}
    with amp.perturbed(batch):
        model(**batch)["loss"].backward()
    with torch.no_grad():  # a hand-written update: no optimizer
        for p in model.parameters():
            p -= 0.1 * p.grad
    with pytest.raises(RuntimeError, match="AMP\\(model, optimizer=optimizer"), amp.perturbed(batch):
        pass


def test_deepspeed_is_refused_by_name(tmp_path, monkeypatch):
    """ZeRO partitions the optimizer state: the first moment cannot be read per parameter."""
    trainer = MomentumAMPTrainer(
        model=TinyClassifier(), args=tiny_args(tmp_path, **MOMENTUM), train_dataset=DictDataset()
    )
    monkeypatch.setattr(trainer_module.deepspeed_engine, "check_supported", lambda accelerator: None)
    trainer.is_deepspeed_enabled = True
    with pytest.raises(ValueError, match="does not support amp_direction='momentum' under DeepSpeed"):
        trainer.train()


# ------------------------------------------------------------------------------------------- the msam preset
def test_msam_preset_is_the_literature_method_on_the_global_sphere(tmp_path):
    """`amp_preset='msam'`: a method, the momentum direction on one global ball of radius 3; trained, ‖Δ‖ = 3 from the
    second step on, with one pass per micro-batch."""
    from amp_hf.presets import PRESETS, preset_config

    preset = PRESETS["msam"]
    assert preset.is_method and preset.study_entry is None and "not a recommendation" in preset.when
    assert preset_config("msam") == AMPConfig(direction="momentum", norm="global", epsilon=3.0, inner_steps=1)
    trainer = train(CountingPasses, TinyClassifier(), tmp_path, amp_preset="msam")
    deltas = [e["amp_delta_norm"] for e in trainer.state.log_history if "loss" in e]
    assert deltas == pytest.approx([0.0, 3.0, 3.0], rel=1e-5) and trainer.passes == 3
    with pytest.raises(ValueError, match="amp_ascent_fraction must be 1 with amp_direction='momentum'"):
        AMPTrainingArguments(output_dir=str(tmp_path), amp_preset="msam", amp_ascent_fraction=0.125)


def test_a_non_finite_first_moment_trains_at_theta_and_is_counted(caplog):
    model, data = TinyClassifier(), DictDataset(n=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    amp = AMP(model, optimizer=optimizer, amp_direction="momentum")
    batch = {"x": data.x[:4], "labels": data.y[:4]}
    model(**batch)["loss"].backward()
    optimizer.step()
    optimizer.state[model.fc1.weight]["momentum_buffer"][0, 0] = float("nan")
    before = params_of(model)
    with amp.perturbed(batch) as result:
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # at θ, no NaN reached them
    assert result.skipped and not result.moved and amp.skipped == 1
    assert "the optimizer's first moment was not finite" in caplog.text


def test_first_moment_problems_are_named_from_the_class_and_settings():
    """Read before the first step: what can never give a direction; an unknown class is judged by its state."""
    from amp_hf.first_moment import first_moment_problem

    params = list(TinyClassifier().parameters())

    class AdamW8bit(torch.optim.AdamW):  # stands in for bitsandbytes' 8-bit AdamW (its states are quantized)
        pass

    AdamW8bit.__module__ = "bitsandbytes.optim.adamw"
    assert "quantized" in first_moment_problem(AdamW8bit(params))
    assert first_moment_problem(torch.optim.SGD(params, lr=0.1, momentum=0.9)) is None
    assert "momentum=0" in first_moment_problem(torch.optim.RMSprop(params))
    assert first_moment_problem(torch.optim.RMSprop(params, momentum=0.9)) is None
    assert first_moment_problem(torch.optim.NAdam(params)) is None
    assert "Adadelta keeps no first moment" in first_moment_problem(torch.optim.Adadelta(params))


# ------------------------------------------------------------------------------------ a radius known to wreck AdamW
WRECKS = "a global radius >= 1 wrecked AdamW training"


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        ({"amp_preset": "msam", "optim": "adamw_torch", "learning_rate": 0.01}, True),  # the trap: msam's SGD radius
        ({"amp_preset": "msam"}, False),  # SGD with momentum: msam's own setting
        ({**MOMENTUM, "amp_norm": "global", "amp_epsilon": 0.1, "optim": "adamw_torch", "learning_rate": 0.01}, False),
    ],
)
def test_trainer_warns_of_a_global_momentum_radius_that_wrecked_adamw(tmp_path, caplog, overrides, warned):
    trainer_cls = SequentialAMPTrainer if "optim" in overrides else MomentumAMPTrainer  # the latter makes SGD 0.9
    train(trainer_cls, TinyClassifier(), tmp_path, max_steps=2, **overrides)
    assert (WRECKS in caplog.text) is warned


def test_loop_warns_of_a_global_momentum_radius_that_wrecked_adamw(caplog):
    """Given the optimizer: at construction; found by the step hooks: at its first step."""
    model = TinyClassifier()
    AMP(model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.01), amp_preset="msam")
    assert caplog.text.count(WRECKS) == 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    amp = AMP(model, amp_preset="msam")
    assert caplog.text.count(WRECKS) == 1  # not yet: the optimizer is unknown
    data = DictDataset(n=8)
    batch = {"x": data.x[:4], "labels": data.y[:4]}
    with amp.perturbed(batch):
        model(**batch)["loss"].backward()
        optimizer.step()
    assert caplog.text.count(WRECKS) == 2
