"""DeepSpeed (ZeRO stages 1-3, through the Trainer's own integration): what AMP's step needs from the engine.

Three things differ from plain PyTorch, and each has one function here:
  - accelerate's `backward` steps the engine's optimizer inside it, on the micro-batch that ends an accumulation
    window. AMP's descent backward runs at θ + Δ, and the optimizer must step from θ: `deferred_step` keeps the
    engine's `step` from running until the weights are restored, and then runs it, unchanged.
  - the ascent differentiates the module inside the engine with `torch.autograd.grad`, which runs neither the
    engine's gradient hooks (they fire when a gradient is accumulated into `.grad`) nor its `backward` (which counts
    micro-steps): the engine's partitioned gradient buffers and counters never see the ascent.
  - an fp16 engine scales its loss itself: `loss_scale` reads that scale, so the ascent can scale and unscale as it
    does for the GradScaler.
ZeRO-3 is refused for now (`check_supported`): its partitioned parameters need what FSDP2's shards get in
`perturbation.py` (whole-tensor norms over the partitions, one Δ for every process), and its persistent small
parameters are kept gathered outside the partitions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover - type hints only
    from deepspeed import DeepSpeedEngine


def check_supported(accelerator: Any) -> None:
    """Refuses, before anything trains, the DeepSpeed set-ups AMP does not handle correctly yet (ZeRO-3)."""
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None)
    stage = getattr(plugin, "zero_stage", None)
    if stage == 3:
        raise ValueError(
            "AMPTrainer does not support DeepSpeed ZeRO stage 3 yet: its parameters are partitioned across processes "
            "(and small ones kept gathered), and perturbing them needs whole-tensor norms over the partitions. Use "
            "ZeRO stage 1 or 2 (zero_optimization.stage in the DeepSpeed config), FSDP2 to shard the parameters "
            "(examples/accelerate/fsdp_gpu.yaml), or set amp_inner_steps=0 / amp_epsilon=0 for plain training."
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
