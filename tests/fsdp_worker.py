"""Run by `test_fsdp.py` under `torchrun --nproc_per_node 2` (CPU, gloo). Exits non-zero on any failure.

Checks, in one launch (a process launch costs ~10 s of imports):
  1. norms of sharded DTensors: `perturbed_weights` on FSDP-style shards (one tensor with dim 0 not divisible by the
     world size, one whose shard on rank 1 is empty) moves every whole tensor exactly as it moves the unsharded
     tensors, for the tensor, global, relative and elementwise balls, restores the shards bit for bit, a non-finite
     loss on one rank makes every rank skip, and sharded and unsharded tensors together are refused;
  2. AMPTrainer under FSDP2 prepared by accelerate's own FSDP plugin (three FSDP units, uneven shards) gives the
     weights of one process running AMP on the concatenated global micro-batches (`reference_amp`), with gradient
     accumulation too, a non-zero Δ, and the same logged metrics on every rank; and with accelerate's bf16
     MixedPrecisionPolicy (bf16 compute and reduction, fp32 shards) within bf16 rounding of that reference; and the
     elementwise ball with the ascent on half of each rank's micro-batch (`amp_ascent_fraction`), whose reference
     ascent sees those halves of the global micro-batch;
  3. a parameter of the root module, whose all-gathered copy FSDP2 keeps after the root's forward (as the
     embeddings and heads of Hugging Face models): the reference's weights, so its ascent gradient is not left in
     `.grad` for the descent to add to (it was, by the sharded `.grad` not being moved aside);
  4. a loss that overflows at θ + Δ under FSDP2, through a parameter of the root module: the descent falls back and
     really runs at θ (it ran on the root's gathered θ + Δ and put NaN into every weight), so the step is one
     process's ERM step on the global micro-batch, and the weights stay finite;
  5. amp_direction='momentum': `momentum_perturbed_weights` on sharded tensors and sharded first moments moves every
     whole tensor as on the unsharded ones (all four balls), and AMPTrainer under FSDP2 with SGD's momentum (its
     state sharded like the parameters) gives the weights of one process on the global micro-batches.

accelerate 1.15 drops the FSDP plugin when the run is on CPU (it becomes plain multi-CPU DDP), so `ForceFSDPOnCPU`
puts the plugin and the FSDP distributed type back right after the Trainer built its accelerator; everything after
that (`fully_shard` through accelerate's `fsdp2_prepare_model`, the Trainer's loop) is the unmodified code.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edge_models import OverflowsWhenPushedSharded, RootScaledClassifier
from helpers import (
    DictDataset,
    SequentialAMPTrainer,
    TinyClassifier,
    reference_amp,
    reference_momentum_amp,
    shard_group,
    tiny_args,
)

from amp_hf import AMPConfig, close_process_group, perturbed_weights
from amp_hf.perturbation import momentum_perturbed_weights

STEPS, BATCH = 3, 4


# --------------------------------------------------------------------------------------- 1. sharded norms
def quadratic(params: list[torch.Tensor], targets: list[torch.Tensor], poison: bool = False):
    """L = Σ ½‖θ_p − t_p‖², ∇L = θ − t: works the same on plain tensors and on DTensors."""

    def fn():
        grads = [p.detach() - t for p, t in zip(params, targets)]
        loss = sum(0.5 * float((g.full_tensor() if isinstance(g, DTensor) else g).square().sum()) for g in grads)
        return torch.tensor(float("inf") if poison else loss), grads

    return fn


def check_sharded_norms() -> None:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    g = torch.Generator().manual_seed(3)
    shapes = [(7, 6), (3,), (1, 5), (8,)]  # 7 and 3 split unevenly over 2 ranks; (1, 5) leaves rank 1 empty
    full = [torch.randn(s, generator=g) for s in shapes]
    targets = [torch.randn(s, generator=g) for s in shapes]
    for norm, epsilon in (("tensor", 0.5), ("global", 0.7), ("relative", 0.1), ("elementwise", 0.3)):
        config = AMPConfig(epsilon=epsilon, inner_lr=0.8, inner_steps=2, norm=norm)
        plain = [torch.nn.Parameter(t.clone()) for t in full]
        with perturbed_weights(plain, quadratic(plain, targets), config) as expected_result:
            expected = [p.detach().clone() for p in plain]
        sharded = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
        dtargets = [distribute_tensor(t, mesh, [Shard(0)]) for t in targets]
        before = [p.to_local().clone() for p in sharded]
        assert sharded[2].to_local().numel() == (5 if dist.get_rank() == 0 else 0)
        with perturbed_weights(sharded, quadratic(sharded, dtargets), config) as result:
            for p, e in zip(sharded, expected):
                torch.testing.assert_close(p.full_tensor(), e, atol=1e-6, rtol=1e-5, msg=lambda m, n=norm: f"{n}: {m}")
            torch.testing.assert_close(result.delta_norm, expected_result.delta_norm, atol=1e-6, rtol=1e-5)
        assert all(torch.equal(p.to_local(), b) for p, b in zip(sharded, before)), f"{norm}: restore not exact"
        assert not any(torch.equal(a, b) for a, b in zip(expected, full) if a.numel() > 1), f"{norm}: Δ = 0"

    # a non-finite ascent on one rank only: both ranks skip, so no tensor ends half perturbed
    sharded = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
    dtargets = [distribute_tensor(t, mesh, [Shard(0)]) for t in targets]
    fn = quadratic(sharded, dtargets, poison=dist.get_rank() == 1)
    with perturbed_weights(sharded, fn, AMPConfig(epsilon=0.5)) as result:
        assert result.skipped, "rank with a finite loss did not skip with the other"
        assert all(torch.equal(p.full_tensor(), t) for p, t in zip(sharded, full))

    try:
        shard_group([sharded[0], torch.nn.Parameter(full[1].clone())])
    except ValueError as err:
        assert "sharded (DTensor) and unsharded" in str(err), err
    else:
        raise AssertionError("a mix of sharded and unsharded parameters was accepted")
    print(f"rank {dist.get_rank()}: sharded norms == whole-tensor norms (tensor, global, relative, elementwise)")


# ------------------------------------------------------------------------------ 2. AMPTrainer under FSDP2
class ForceFSDPOnCPU:
    """Keeps accelerate's FSDP plugin on CPU, where accelerate 1.15 silently falls back to multi-CPU DDP."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        if state.mixed_precision != "no":  # as accelerate does where it keeps FSDP: bf16 -> a MixedPrecisionPolicy
            state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
        state.distributed_type = DistributedType.FSDP
        self.is_fsdp_enabled = True


class FSDPAMPTrainer(ForceFSDPOnCPU, SequentialAMPTrainer):
    pass


def run_fsdp(out: str, model: torch.nn.Module | None = None, **overrides) -> FSDPAMPTrainer:
    fsdp_config = {"version": 2, "transformer_layer_cls_to_wrap": ["Linear"]}  # fc1, fc2 and the root: 3 units
    settings = dict(max_steps=STEPS, per_device_train_batch_size=BATCH, ddp_backend="gloo", fsdp=True)
    args = tiny_args(out, **{**settings, "fsdp_config": fsdp_config, **overrides})
    model = TinyClassifier() if model is None else model
    name = type(model).__name__  # fully_shard changes the class in place
    trainer = FSDPAMPTrainer(model=model, args=args, train_dataset=DictDataset(n=64))
    assert trainer.accelerator.is_fsdp2
    trainer.train()
    assert trainer.model_wrapped is trainer.model and type(trainer.model).__name__ == f"FSDP{name}"
    assert all(isinstance(p, DTensor) for p in trainer.model.parameters())
    assert trainer.model.fc2.weight.to_local().shape[0] == (2 if dist.get_rank() == 0 else 1)  # uneven shards
    return trainer


def heads_of_each_rank(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The global micro-batch's rows that the ranks' ascents see with amp_ascent_fraction = 0.5: each rank's half."""
    rows = [*range(BATCH // 2), *range(BATCH, BATCH + BATCH // 2)]
    return {k: v[rows] for k, v in batch.items()}


def check_trainer(
    out: str, norm: str, epsilon: float, grad_accum: int, inner_steps: int, bf16: bool = False, fraction: float = 1.0,
    model_cls: type[torch.nn.Module] = TinyClassifier,
) -> None:  # fmt: skip
    trainer = run_fsdp(
        out, model=model_cls(), amp_epsilon=epsilon, amp_norm=norm, amp_inner_steps=inner_steps,
        gradient_accumulation_steps=grad_accum, bf16=bf16, amp_ascent_fraction=fraction,
    )  # fmt: skip
    if bf16:  # FSDP2 computes and reduces in bf16; the shards AMP perturbs and restores stay fp32
        policy = trainer.model._get_fsdp_state()._mp_policy
        assert policy.param_dtype == policy.reduce_dtype == torch.bfloat16, policy
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    got = {n: p.detach().full_tensor() for n, p in trainer.model.named_parameters()}
    # the global micro-batch is both ranks' micro-batches together: batch 2·BATCH in one process
    settings = dict(steps=STEPS, batch_size=2 * BATCH, grad_accum=grad_accum, inner_steps=inner_steps)
    head = heads_of_each_rank if fraction == 0.5 else None
    expected = reference_amp(model_cls(), DictDataset(n=64), epsilon=epsilon, norm=norm, ascent_head=head, **settings)
    erm = reference_amp(model_cls(), DictDataset(n=64), epsilon=0.0, **settings)
    what = f"FSDP2 {norm} GA={grad_accum} K={inner_steps}" + (" bf16" if bf16 else "") + f" f={fraction}"
    what += "" if model_cls is TinyClassifier else f" {model_cls.__name__}"
    atol = 6e-4 if bf16 else 2e-6  # bf16 forward/backward against the fp32 reference: measured 2.5e-4
    for name, p in expected.named_parameters():
        message = lambda m, n=name: f"{what} {n}: {m}"  # noqa: E731
        torch.testing.assert_close(got[name], p.detach(), atol=atol, rtol=1e-5, msg=message)
    moved = max(float((got[n] - p.detach()).abs().max()) for n, p in erm.named_parameters())
    assert moved > 5 * atol, f"{what}: the weights of ERM (AMP moved them by {moved})"  # 5.3e-3 in the tensor case

    logs = [
        (h["loss"], h["amp_clean_loss"], h["amp_delta_norm"])
        for h in trainer.state.log_history
        if "amp_clean_loss" in h
    ]
    assert len(logs) == STEPS and all(d > 0 for _, _, d in logs), logs
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, logs)
    assert all(g == gathered[0] for g in gathered), gathered
    print(f"rank {dist.get_rank()}: {what} == one process on the global batch, logs agree", flush=True)


def check_fallback_at_theta(out: str) -> None:
    """The model's s sits in the root module: FSDP2 keeps the root's gathered weights (s = 0.5 after the
    ascent) after the descent's forward, so a forward at θ that did not reshard first would see s = 0.5 again, get
    an infinite loss once more and back-propagate it (NaN weights)."""
    trainer = run_fsdp(out, model=OverflowsWhenPushedSharded(), max_steps=1)
    logs = trainer.state.log_history[0]
    assert logs["amp_skipped"] == 2 and logs["amp_delta_norm"] == 0.0, logs  # both ranks fell back
    got = {n: p.detach().full_tensor() for n, p in trainer.model.named_parameters()}
    assert all(torch.isfinite(v).all() for v in got.values()), got
    erm = reference_amp(OverflowsWhenPushedSharded(), DictDataset(n=64), steps=1, batch_size=2 * BATCH, epsilon=0.0)
    for name, p in erm.named_parameters():
        torch.testing.assert_close(got[name], p.detach(), atol=2e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert abs(float(got["s"][0])) > 1.0  # trained at θ: s got the gradient 200 of exp(200·s) at s = 0
    print(f"rank {dist.get_rank()}: FSDP2 fall-back at θ == one process's ERM step", flush=True)


# ------------------------------------------------------------------------------ 5. the momentum direction
def check_momentum_direction(out: str) -> None:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    g = torch.Generator().manual_seed(4)
    shapes = [(7, 6), (3,), (1, 5), (8,)]
    full = [torch.randn(s, generator=g) for s in shapes]
    moments = [torch.randn(s, generator=g) for s in shapes]
    for norm, epsilon in (("tensor", 0.5), ("global", 0.7), ("relative", 0.1), ("elementwise", 0.3)):
        config = AMPConfig(epsilon=epsilon, norm=norm, direction="momentum")
        plain = [torch.nn.Parameter(t.clone()) for t in full]
        with momentum_perturbed_weights(plain, moments, config) as expected_result:
            expected = [p.detach().clone() for p in plain]
        sharded = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
        dmoments = [distribute_tensor(m, mesh, [Shard(0)]) for m in moments]
        with momentum_perturbed_weights(sharded, dmoments, config) as result:
            for p, e in zip(sharded, expected):
                torch.testing.assert_close(p.full_tensor(), e, atol=1e-6, rtol=1e-5, msg=lambda m, n=norm: f"{n}: {m}")
            torch.testing.assert_close(result.delta_norm, expected_result.delta_norm, atol=1e-6, rtol=1e-5)
        assert all(torch.equal(p.full_tensor(), t) for p, t in zip(sharded, full)), f"{norm}: restore not exact"
    print(f"rank {dist.get_rank()}: momentum direction: shards move as the whole tensors", flush=True)

    momentum = dict(amp_direction="momentum", amp_norm="global", amp_epsilon=0.3, optim_args="momentum=0.9")
    trainer = run_fsdp(out, **momentum)
    got = {n: p.detach().full_tensor() for n, p in trainer.model.named_parameters()}
    expected = reference_momentum_amp(
        TinyClassifier(), DictDataset(n=64), steps=STEPS, batch_size=2 * BATCH, epsilon=0.3
    )
    erm = reference_momentum_amp(TinyClassifier(), DictDataset(n=64), steps=STEPS, batch_size=2 * BATCH, epsilon=0.0)
    for name, p in expected.named_parameters():
        message = lambda m, n=name: f"FSDP2 momentum {n}: {m}"  # noqa: E731
        torch.testing.assert_close(got[name], p.detach(), atol=2e-6, rtol=1e-5, msg=message)
    moved = max(float((got[n] - p.detach()).abs().max()) for n, p in erm.named_parameters())
    assert moved > 1e-5, f"FSDP2 momentum: the weights of ERM (moved by {moved})"
    print(f"rank {dist.get_rank()}: FSDP2 momentum direction matches one process on the global batch", flush=True)


def main() -> None:
    dist.init_process_group("gloo")
    assert dist.get_world_size() == 2
    check_sharded_norms()
    out = tempfile.mkdtemp()
    check_trainer(out, norm="tensor", epsilon=0.05, grad_accum=1, inner_steps=1)
    check_trainer(out, norm="global", epsilon=0.1, grad_accum=2, inner_steps=2)
    check_trainer(out, norm="relative", epsilon=0.02, grad_accum=1, inner_steps=1)
    check_trainer(out, norm="tensor", epsilon=0.05, grad_accum=1, inner_steps=1, bf16=True)
    check_trainer(out, norm="elementwise", epsilon=0.05, grad_accum=2, inner_steps=1, fraction=0.5)
    # a parameter of the root module, whose gathered copy outlives the forward: its ascent gradient must not stay
    # in `.grad` (with K = 2 the projection scales it in place as Δ's storage; GA = 2 accumulates the descents)
    check_trainer(out, norm="tensor", epsilon=0.05, grad_accum=2, inner_steps=2, model_cls=RootScaledClassifier)
    check_fallback_at_theta(out)
    check_momentum_direction(out)
    print(f"rank {dist.get_rank()}: ALL OK", flush=True)
    close_process_group()  # without it, torch 2.13's gloo threads can abort the process at exit


if __name__ == "__main__":
    main()
