"""What the ascent needs from a training setup's wrappers, shared by the Trainer glue and the custom-loop API.

The ascent passes run on the module inside a DDP wrapper (its forward would broadcast buffers and arm a gradient
all-reduce that the ascent's `torch.autograd.grad` never completes), and take their gradient unscaled by the fp16
GradScaler's current scale (read, never `unscale_`d: accelerate unscales once per optimizer step, when clipping).
Under FSDP2 the gradient of the sharded parameters can only be had through a real backward (`fsdp_gradient`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

try:  # public since torch 2.6; builds without distributed support have no FSDP2
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - depends on the torch build
    FSDPModule = None


def without_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper: its forward runs no buffer broadcast and arms no gradient all-reduce."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def grad_scaler_scale(accelerator: Any) -> float | None:
    """The current scale of `accelerator.scaler` (accelerate's fp16 GradScaler), or None when there is none."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return float(scaler.get_scale())


def is_fsdp2(model: torch.nn.Module) -> bool:
    """Whether `model` is the root of an FSDP2 (`fully_shard`) module."""
    return FSDPModule is not None and isinstance(model, FSDPModule)


def fsdp_gradient(model: torch.nn.Module, loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """∇loss for FSDP2's sharded `params`, averaged over the processes, leaving every `.grad` as it was.

    `torch.autograd.grad` cannot be used: the forward ran on all-gathered copies, so the sharded parameters are not in
    the graph (it would report them unused, and zeros would perturb nothing). The gradient reaches the shards only
    through FSDP's post-backward reduce-scatter into `.grad`. So: move every trainable parameter's `.grad` (the
    micro-batches accumulated so far) aside, run a real backward, take the fresh sharded gradients and put the old
    `.grad` back: a swap of references, no copy.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    kept = [p.grad for p in trainable]
    for p in trainable:
        p.grad = None
    try:
        loss.backward()
        fresh = [p.grad for p in params]
    finally:
        for p, grad in zip(trainable, kept):
            p.grad = grad
    return fresh
