"""What the ascent needs from a training setup's wrappers, shared by the Trainer glue and the custom-loop API.

The ascent passes run on the module inside a DDP wrapper (its forward would broadcast buffers and arm a gradient
all-reduce that the ascent's `torch.autograd.grad` never completes), and take their gradient unscaled by the fp16
GradScaler's current scale (read, never `unscale_`d: accelerate unscales once per optimizer step, when clipping).
Under FSDP2, and through reentrant gradient checkpoints, the gradient can only be had through a real backward
(`gradient_by_backward`); in a distributed run every process takes AMP's skip decisions together
(`world_if_distributed`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .deepspeed_engine import engine_of

try:  # public since torch 2.6; builds without distributed support have no FSDP2
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - depends on the torch build
    FSDPModule = None


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside any nesting of DDP, `torch.compile` and DeepSpeed wrappers (`compile(DDP(m))`, what
    accelerate builds with a dynamo backend, and `DDP(compile(m))` alike): the module whose parameter names the
    patterns match, whose FSDP2 root is recognised, and whose forward the ascent runs (no buffer broadcast, no armed
    gradient all-reduce; uncompiled, so no recompilation per pass)."""
    while True:
        if isinstance(model, DistributedDataParallel) or engine_of(model) is not None:
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def grad_scaler_scale(accelerator: Any) -> float | None:
    """The current scale of `accelerator.scaler` (accelerate's fp16 GradScaler), or None when there is none."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return float(scaler.get_scale())


def is_fsdp2(model: torch.nn.Module) -> bool:
    """Whether `model` is the root of an FSDP2 (`fully_shard`) module."""
    return FSDPModule is not None and isinstance(model, FSDPModule)


def reshard(root: torch.nn.Module) -> None:
    """Frees the all-gathered weights of every FSDP2 module under `root` (`FSDPModule.reshard`, public API), so the
    next forward gathers them from the shards. FSDP2 keeps the root module's gathered weights after its forward (the
    backward needs them at once) and skips the all-gather of a module that is still unsharded: without this, a
    forward after θ was written back into the shards would still run on the gathered θ + Δ, and a parameter listed
    after a forward would be the root's gathered copy rather than the shard whose `.grad` FSDP writes."""
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def world_if_distributed() -> dist.ProcessGroup | None:
    """The whole world when the run is distributed (every process must take AMP's decisions together), else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def has_reentrant_checkpoint(loss: torch.Tensor) -> bool:
    """Whether a reentrant checkpoint's backward node (`CheckpointFunctionBackward`) is in the graph behind `loss`."""
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if node.name() == "CheckpointFunctionBackward":
            return True
        seen.add(node)
        stack.extend(following for following, _ in node.next_functions)
    return False


def gradient_by_backward(
    trainable: list[torch.Tensor], loss: torch.Tensor, params: list[torch.Tensor]
) -> list[torch.Tensor | None]:
    """∇loss for `params` by a real backward, leaving the `.grad` of every `trainable` tensor as it was: the earlier
    micro-batches' `.grad` is moved aside and put back (a swap of references, no copy). Two cases need it: FSDP2,
    whose forward runs on gathered copies, so the gradient reaches the shards only through its reduce-scatter into
    `.grad` (averaged over the processes); and reentrant checkpoints, whose nested `backward` refuses
    `torch.autograd.grad`. (Under DDP the loss comes from the module inside the wrapper: nothing is communicated.)
    """
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
