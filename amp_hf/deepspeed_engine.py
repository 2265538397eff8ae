"""DeepSpeed (ZeRO stages 1-3, through the Trainer's own integration): what AMP's step needs from the engine.

Each difference from plain PyTorch has one function here: accelerate's `backward` steps the engine's optimizer inside
it, which must wait until θ is back (`deferred_step`); an fp16 engine scales its loss itself (`loss_scale`); ZeRO-3's
ascent needs each process's partition of the averaged gradient (`zero3_gradient`; `sharding.py` perturbs the
partitions). The ascent's `torch.autograd.grad` on the module inside the engine runs neither the engine's gradient
hooks nor its `backward`, so the engine's gradient buffers and counters never see it. Unsupported set-ups are
refused before training (`check_supported`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .sharding import is_partitioned, zero3_valid_range

if TYPE_CHECKING:  # pragma: no cover - type hints only
    from deepspeed import DeepSpeedEngine


def check_supported(accelerator: Any) -> None:
    """Refuses, before anything trains, the DeepSpeed set-ups AMP does not handle correctly: ZeRO-3 with parameter
    offload (the partitions live off the device) or with ZeRO++'s hierarchical partitions, and MiCS."""
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    if getattr(plugin, "zero_stage", None) != 3:
        return
    zero = (getattr(plugin, "deepspeed_config", None) or {}).get("zero_optimization", {})
    offload = str((zero.get("offload_param") or {}).get("device", "none")).lower()
    problems = []
    if offload not in ("none", "auto"):
        problems.append(f"offload_param.device={offload!r} (allowed: 'none'; offload_optimizer is fine)")
    if int(zero.get("zero_hpz_partition_size", 1) or 1) > 1:
        problems.append(f"zero_hpz_partition_size={zero['zero_hpz_partition_size']} (allowed: 1)")
    if int(zero.get("mics_shard_size", -1) or -1) > 0:
        problems.append(f"mics_shard_size={zero['mics_shard_size']} (allowed: -1, MiCS off)")
    if problems:
        raise ValueError(
            "AMPTrainer supports DeepSpeed ZeRO stage 3 with its parameters partitioned on the devices over one "
            f"process group; the config has {'; '.join(problems)}. Change zero_optimization accordingly, use ZeRO "
            "stage 1 or 2, or set amp_inner_steps=0 / amp_epsilon=0 for plain training."
        )


def engine_of(model: torch.nn.Module) -> DeepSpeedEngine | None:
    """The DeepSpeed engine when `model` is one (the Trainer's `model_wrapped` under DeepSpeed), else None.

    DeepSpeed is not imported for this: importing it takes seconds and logs, and a model can only be its engine if
    something imported it already.
    """
    deepspeed = sys.modules.get("deepspeed")
    engine_type = getattr(deepspeed, "DeepSpeedEngine", None)
    return model if engine_type is not None and isinstance(model, engine_type) else None


def loss_scale(engine: DeepSpeedEngine) -> float | None:
    """The fp16 engine's current dynamic loss scale (None for fp32 and bf16 engines, which do not scale)."""
    if not engine.fp16_enabled():
        return None
    scale = getattr(engine.optimizer, "cur_scale", None)
    return None if scale is None else float(scale)


@contextmanager
def deferred_step(engine: DeepSpeedEngine | None) -> Iterator[None]:
    """Holds back the engine's optimizer step taken inside the block and runs it when the block ends without error.

    Wrap it around the weights' perturbation, so the step runs after θ is restored:
    `with deferred_step(engine), perturbed_weights(...): descent backward`. Everything else accelerate's `backward`
    does (the accumulation boundary, the engine's backward and gradient reduction) runs as it always does.
    """
    if engine is None:
        yield
        return
    held: list[tuple[tuple, dict]] = []
    engine.step = lambda *args, **kwargs: held.append((args, kwargs))  # an instance attribute shadows the method
    try:
        yield
    finally:
        del engine.step
    for args, kwargs in held:
        engine.step(*args, **kwargs)


ZERO3_BUCKET_ELEMENTS = 1 << 24
"""Gradient elements averaged per all-reduce under ZeRO-3 (a float32 bucket of 64 MiB)."""


def zero3_gradient(
    engine: DeepSpeedEngine, loss: torch.Tensor, wrt: Sequence[torch.Tensor]
) -> list[torch.Tensor | None]:
    """∇loss for ZeRO-3: for each partitioned parameter, this process's valid partition (flat) of the gradient
    averaged over the processes; other tensors in `wrt` (the item count) get their own local gradient.

    `torch.autograd.grad` differentiates the module without the engine: the engine's gradient hooks fire on
    accumulation into `.grad`, which does not happen, so its partitioned gradient buffers and counters never see the
    ascent. The forward and backward still gather the parameters through the engine's module hooks; the submodules
    whose post-backward hook never fires (those fed inputs without gradient) are released as the engine's own
    backward does at its end. Memory: `autograd.grad` returns the whole gradients together, so the ascent peaks at
    one full-size gradient per process (in the parameters' dtype); they are averaged in float32 buckets and each is
    freed as soon as its partition is cut out.
    """
    grads = list(torch.autograd.grad(loss, list(wrt), allow_unused=True))
    engine.optimizer.parameter_offload.release_backward_leftovers()
    where = [i for i, p in enumerate(wrt) if is_partitioned(p)]
    if not where:
        return grads
    group = wrt[where[0]].ds_process_group
    processes = dist.get_world_size(group=group)
    device = next((grads[i].device for i in where if grads[i] is not None), wrt[where[0]].ds_tensor.device)
    while where:
        bucket, size = [], 0
        while where and (not bucket or size + int(wrt[where[0]].ds_numel) <= ZERO3_BUCKET_ELEMENTS):
            bucket.append(where.pop(0))
            size += int(wrt[bucket[-1]].ds_numel)
        flat = torch.zeros(size, dtype=torch.float32, device=device)
        offset = 0
        for i in bucket:
            n = int(wrt[i].ds_numel)
            if grads[i] is not None:
                flat[offset : offset + n].copy_(grads[i].reshape(-1))
            grads[i] = None  # the whole gradient is not needed any more
            offset += n
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat /= processes
        offset = 0
        for i in bucket:
            p = wrt[i]
            start, length = zero3_valid_range(p)
            grads[i] = flat[offset + start : offset + start + length].to(p.ds_tensor.dtype, copy=True)
            offset += int(p.ds_numel)
    return grads
