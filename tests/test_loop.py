"""`amp_hf.AMP` in a custom Accelerate loop (one process) against the plain-PyTorch reference, and its guarantees.

Two processes (DDP over gloo) and the no_trainer example on two processes: `loop_worker.py`, one launch.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from accelerate_loop import train_with_amp
from helpers import (
    DictDataset,
    OverflowsWhenPushed,
    TinyClassifier,
    assert_params_close,
    assert_statistics_of_the_clean_pass,
    params_of,
    reference_amp,
    statistics_under_each_policy,
    tiny_args,
    torchrun_two_processes,
)
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

from amp_hf import AMP, AMPConfig, add_amp_arguments
from amp_hf.loop import SETTING_NAMES

WORKER = Path(__file__).with_name("loop_worker.py")


@pytest.mark.parametrize(("norm", "inner_steps", "step_inside"), [
    ("tensor", 1, False), ("tensor", 2, False), ("global", 1, False), ("global", 2, False),
    ("tensor", 1, True), ("global", 2, True),
])  # fmt: skip
def test_loop_with_accumulation_matches_the_reference(accelerator_of, norm, inner_steps, step_inside):
    """GA = 2 with `accelerator.accumulate`: each micro-batch its own Δ, to float precision; the optimizer stepping
    after the block, or inside it (the no_trainer scripts' shape: the step is then taken from θ)."""
    data = DictDataset(n=32)
    settings = dict(epsilon=0.05, inner_steps=inner_steps, norm=norm)
    trained, amp, results = train_with_amp(
        TinyClassifier(), data, accelerator_of(gradient_accumulation_steps=2), steps=3, step_inside=step_inside,
        **{f"amp_{k}": v for k, v in settings.items()},
    )  # fmt: skip
    expected = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, grad_accum=2, **settings)
    assert_params_close(trained, expected)
    assert amp.optimizer_steps == 3 and len(results) == 6
    assert all(r.clean_loss is not None and float(r.delta_norm) > 0 and not r.skipped for r in results)
    erm = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, grad_accum=2, inner_steps=0)
    assert not torch.allclose(trained.fc1.weight, erm.fc1.weight, atol=1e-4)  # AMP changed the update


def test_ascent_fraction_include_and_exclude_match_the_reference(accelerator_of):
    data = DictDataset(n=32)
    trained, amp, _ = train_with_amp(
        TinyClassifier(), data, accelerator_of(), steps=3, amp_epsilon=0.05, amp_ascent_fraction=0.5,
        amp_include=["fc1"], amp_exclude=["bias"],
    )  # fmt: skip
    assert [name for name, _ in amp.named_parameters()] == ["fc1.weight"]
    expected = reference_amp(
        TinyClassifier(), data, steps=3, batch_size=4, epsilon=0.05, ascent_fraction=0.5,
        perturb=lambda name: name == "fc1.weight",
    )  # fmt: skip
    assert_params_close(trained, expected)


def test_pattern_matching_nothing_is_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="amp_hf.loop"):
        amp = AMP(TinyClassifier(), amp_exclude=["LayerNorm"])
    assert amp.selection.unmatched["exclude"] == ("LayerNorm",)
    assert "amp_exclude pattern(s) ['LayerNorm'] match no parameter name" in caplog.text


def test_grad_untouched_weights_perturbed_in_the_block_and_restored_exactly():
    model = TinyClassifier()
    amp = AMP(model, amp_epsilon=0.05)
    data = DictDataset(n=8)
    first, second = ({"x": data.x[i : i + 4], "labels": data.y[i : i + 4]} for i in (0, 4))
    model(**first)["loss"].backward()  # an earlier micro-batch's gradient, accumulated
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    theta = params_of(model)
    with amp.perturbed(second) as result:
        for name, p in model.named_parameters():
            assert torch.equal(p.grad, grads[name]), f"the ascent wrote to {name}.grad"
            assert not torch.equal(p, theta[name]), f"{name} is not perturbed in the block"
        model(**second)["loss"].backward()
    assert result.clean_loss == model(**second)["loss"].detach()  # L at θ, for logging
    assert float(result.delta_norm) > 0
    for name, p in model.named_parameters():
        assert torch.equal(p, theta[name]), f"{name} is not θ after the block"


def test_weights_restored_exactly_when_the_block_raises():
    model = TinyClassifier()
    amp = AMP(model, amp_epsilon=0.05, amp_inner_steps=2)
    data = DictDataset(n=4)
    theta = params_of(model)
    with pytest.raises(RuntimeError, match="user error"), amp.perturbed({"x": data.x, "labels": data.y}):
        raise RuntimeError("user error")
    for name, p in model.named_parameters():
        assert torch.equal(p, theta[name]), name


def test_non_finite_ascent_leaves_the_weights_at_theta_and_says_so(caplog):
    """K = 2: the second ascent pass runs at θ + Δ, where the loss overflows: the block then runs at θ."""
    model = OverflowsWhenPushed()
    amp = AMP(model, amp_inner_steps=2)
    data = DictDataset(n=4)
    theta = params_of(model)
    with caplog.at_level(logging.WARNING, logger="amp_hf.loop"), amp.perturbed({"x": data.x, "labels": data.y}) as r:
        for name, p in model.named_parameters():
            assert torch.equal(p, theta[name]), f"{name} moved after a non-finite ascent"
    assert r.skipped and amp.skipped == 1 and float(r.delta_norm) == 0
    assert "not finite" in caplog.text


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_batchnorm_statistics_are_the_clean_passs_at_theta(fraction):
    """The policy (running_stats.py): one update per micro-batch, by the clean pass on the head at θ, whatever the
    later ascent passes (K = 2) and the block's own forward at θ + Δ do."""
    model = TinyClassifier(batchnorm=True)
    data = DictDataset(n=8)
    batch = {"x": data.x, "labels": data.y}
    policies = statistics_under_each_policy(model, batch, fraction, epsilon=0.05)
    amp = AMP(model, amp_epsilon=0.05, amp_ascent_fraction=fraction)
    with amp.perturbed(batch):
        model(**batch)["loss"].backward()
    assert_statistics_of_the_clean_pass(model, policies)
    amp_k2 = AMP(twice := TinyClassifier(batchnorm=True), amp_epsilon=0.05, amp_inner_steps=2)
    with amp_k2.perturbed(batch):
        twice(**batch)
    assert int(twice.norm.num_batches_tracked) == 1


def test_fp16_grad_scaler_ascent_is_unscaled(accelerator_of):
    """accelerate makes no GradScaler on CPU: one is placed where it keeps it, before `prepare` hands it on.

    ε is large enough that nothing is projected, so a scaled ascent gradient would show as a 2¹⁰ times larger Δ.
    """
    accelerator = accelerator_of()
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    data = DictDataset(n=32)
    trained, _, results = train_with_amp(
        TinyClassifier(), data, accelerator, steps=3, amp_epsilon=50.0, step_inside=True
    )
    expected = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, epsilon=50.0)
    assert all(0 < float(r.delta_norm) < 50.0 for r in results)
    assert_params_close(trained, expected)

    overflowing = accelerator_of()  # a scale whose scaled loss overflows: the ascent is skipped, so is the step
    overflowing.scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))
    model = TinyClassifier()
    before = params_of(model)
    trained, amp, results = train_with_amp(model, data, overflowing, steps=1, amp_epsilon=50.0, step_inside=True)
    assert results[0].skipped and amp.skipped == 1
    assert all(torch.equal(p, before[n]) for n, p in trained.named_parameters())  # the scaler skipped the step


@pytest.mark.parametrize("autocast_around", [False, True])
def test_bf16_autocast_matches_the_reference_under_autocast(accelerator_of, autocast_around):
    """bf16 autocast in each forward (accelerate's prepared model), and also around the whole step."""
    data = DictDataset(n=32)
    trained, _, results = train_with_amp(
        TinyClassifier(), data, accelerator_of(mixed_precision="bf16"), steps=3, amp_epsilon=0.05,
        autocast_around=autocast_around,
    )  # fmt: skip
    assert all(float(r.delta_norm) > 0 for r in results)
    expected = reference_amp(AutocastClassifier(), data, steps=3, batch_size=4, epsilon=0.05)
    assert_params_close(trained, expected, atol=1e-6)
    fp32 = reference_amp(TinyClassifier(), data, steps=3, batch_size=4, epsilon=0.05)
    assert not torch.allclose(trained.fc1.weight, fp32.fc1.weight, atol=1e-4)  # bf16 autocast did run


class AutocastClassifier(TinyClassifier):
    """Each forward in its own bf16 autocast region, as accelerate's prepared forward runs (one region per call: a
    region's cast cache would otherwise keep bf16 copies of weights the ascent has since changed)."""

    def forward(self, *args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = super().forward(*args, **kwargs)
        return {k: v.float() for k, v in out.items()}


def test_interval_start_step_and_off_switch(accelerator_of):
    data = DictDataset(n=32)
    _, amp, results = train_with_amp(
        TinyClassifier(), data, accelerator_of(gradient_accumulation_steps=2), steps=4, amp_interval=2,
        amp_start_step=1,
    )  # fmt: skip
    assert [r.clean_loss is not None for r in results] == [False, False, True, True, False, False, True, True]
    assert amp.optimizer_steps == 4
    off, _, results = train_with_amp(TinyClassifier(), data, accelerator_of(), steps=2, amp_inner_steps=0)
    erm = reference_amp(TinyClassifier(), data, steps=2, batch_size=4, inner_steps=0)
    assert all(r.clean_loss is None for r in results)
    assert all(torch.equal(a, b) for a, b in zip(off.parameters(), erm.parameters()))  # bit-identical plain step


def test_settings_are_validated_like_the_training_arguments(tmp_path):
    for bad in ({"amp_norm": "ball"}, {"amp_epsilon": -1.0}, {"amp_inner_steps": 1.5}, {"amp_exclude": 3}):
        with pytest.raises(ValueError) as from_loop:
            AMP(TinyClassifier(), **bad)
        with pytest.raises(ValueError) as from_args:
            tiny_args(tmp_path, **bad)
        assert str(from_loop.value) == str(from_args.value)
        assert next(iter(bad)) in str(from_loop.value)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['amp_epsilom'\]; allowed: amp_epsilon, "):
        AMP(TinyClassifier(), amp_epsilom=0.1)
    amp = AMP(TinyClassifier(), config=AMPConfig(epsilon=0.2, norm="global"), amp_inner_steps=2)
    assert (amp.config.epsilon, amp.config.norm, amp.config.inner_steps) == (0.2, "global", 2)


def test_argparse_flags_are_the_training_arguments_fields():
    parser = add_amp_arguments(argparse.ArgumentParser())
    args = parser.parse_args("--amp_epsilon 0.1 --amp_norm global --amp_exclude bias LayerNorm".split())
    amp = AMP.from_args(TinyClassifier(), args)
    assert amp.config == AMPConfig(epsilon=0.1, norm="global", exclude=("bias", "LayerNorm"))
    assert {a.dest for a in parser._actions} - {"help"} == {*SETTING_NAMES, "amp_preset"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp_norm", "ball"])
    # a preset fills the flags left out, and an explicit flag wins even when it equals the default
    args = parser.parse_args("--amp_preset cnn_long_noisy --amp_inner_lr 1.0 --amp_epsilon 0.2".split())
    amp = AMP.from_args(TinyClassifier(), args)
    assert amp.config == AMPConfig(epsilon=0.2, ascent_fraction=0.125)


def test_presets_fill_the_settings_and_explicit_keywords_win(tmp_path):
    assert AMP(TinyClassifier(), amp_preset="cnn_long_noisy").config == AMPConfig(ascent_fraction=0.125)
    assert AMP(TinyClassifier(), amp_preset="text_finetune").config.enabled is False  # plain ERM
    amp = AMP(TinyClassifier(), amp_preset="cnn_long_noisy", amp_ascent_fraction=1.0, amp_norm="global")
    assert amp.config == AMPConfig(norm="global")
    with pytest.raises(ValueError, match=r"amp_preset .*cnn_long_noisy"):
        AMP(TinyClassifier(), amp_preset="cnn_long")
    with pytest.raises(ValueError, match="amp_preset or config"):
        AMP(TinyClassifier(), amp_preset="cnn_long_noisy", config=AMPConfig())
    trainer_args = tiny_args(tmp_path, amp_preset="cnn_long_noisy", amp_epsilon=0.3)  # the same resolution as here
    assert (
        AMP.from_args(TinyClassifier(), trainer_args).config
        == trainer_args.amp_config
        == AMPConfig(epsilon=0.3, ascent_fraction=0.125)
    )


def test_batch_without_loss_fn_and_custom_loss_fn():
    model = TinyClassifier()
    data = DictDataset(n=4)
    with pytest.raises(ValueError, match="Pass loss_fn=lambda module, batch"), AMP(model).perturbed((data.x, data.y)):
        pass
    amp = AMP(model, amp_epsilon=0.05, loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0])["logits"], b[1]))
    with amp.perturbed((data.x, data.y)) as result:
        pass
    assert float(result.delta_norm) > 0


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED", "MEGATRON_LM"])
def test_unsupported_backends_are_refused_by_name(kind):
    accelerator = SimpleNamespace(distributed_type=DistributedType[kind])
    with pytest.raises(ValueError, match=f"amp_hf.AMP does not support {kind} in a custom loop"):
        AMP(TinyClassifier(), accelerator=accelerator)
    AMP(TinyClassifier(), accelerator=accelerator, amp_epsilon=0.0)  # plain training is not refused


def test_fsdp2_plugin_is_accepted_and_fsdp1_or_offload_refused():
    AMP(TinyClassifier(), accelerator=pretend_fsdp(fsdp_version=2, cpu_offload=OffloadPolicy()))
    for plugin in (dict(fsdp_version=1), dict(fsdp_version=2, cpu_offload=CPUOffloadPolicy())):
        with pytest.raises(ValueError, match=r"only FSDP2 .* without CPU offload is supported"):
            AMP(TinyClassifier(), accelerator=pretend_fsdp(**plugin))


def pretend_fsdp(**plugin) -> SimpleNamespace:
    """An accelerator that reports FSDP with a plugin of these fields (no process group, nothing sharded)."""
    return SimpleNamespace(
        distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=SimpleNamespace(**plugin))
    )


def test_two_processes_ddp_and_fsdp2_match_the_reference_and_the_no_trainer_example_runs():
    done = torchrun_two_processes(str(WORKER), timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count("ALL OK") == 2
    assert done.stdout.count("== reference") == 10
    assert done.stdout.count("momentum direction matches the accumulating reference") == 2
    assert "communication AMP {'allreduce': 3, 'ddp_forward': 6} == ERM" in done.stdout
