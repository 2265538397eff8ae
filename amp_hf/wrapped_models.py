"""What the ascent needs from a training setup's wrappers, shared by the Trainer glue and the custom-loop API.

The ascent passes run on the module inside a DDP wrapper (its forward would broadcast buffers and arm a gradient
all-reduce that the ascent's `torch.autograd.grad` never completes), and take their gradient unscaled by the fp16
GradScaler's current scale (read, never `unscale_`d: accelerate unscales once per optimizer step, when clipping).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel


def without_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper: its forward runs no buffer broadcast and arms no gradient all-reduce."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def grad_scaler_scale(accelerator: Any) -> float | None:
    """The current scale of `accelerator.scaler` (accelerate's fp16 GradScaler), or None when there is none."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return None
    return float(scaler.get_scale())
