"""Where the momentum direction (amp_direction="momentum") comes from: the optimizer's first-moment state.

The direction of an optimizer's next step is known before the gradient is: SGD with momentum steps θ − lr·m with m
its `momentum_buffer`; the Adam family steps θ − lr·m̂/(√v̂ + ε), whose sign per element is that of −m with m its
`exp_avg`. Both are read per parameter from `optimizer.state`, which holds them only after the optimizer's first
step (until then Δ = 0). An optimizer that keeps no first moment (SGD without momentum, Adafactor without beta1,
Adagrad, ...) is refused: there would be no direction to read, and the run would silently be plain ERM.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

STATE_KEYS = ("momentum_buffer", "exp_avg")
"""The first-moment entries of `optimizer.state[p]`: torch's SGD and RMSprop (with momentum), the Adam family."""

WHAT_WORKS = (
    "Use an optimizer with a first moment: SGD with momentum > 0 (optim='sgd', optim_args='momentum=0.9'), or the "
    "Adam family (adamw_torch, adamw_torch_fused, Adam, NAdam, RAdam, Adamax), or set amp_direction='gradient'"
)

NEVER_A_FIRST_MOMENT = ("Adagrad", "Adadelta", "LBFGS", "Rprop", "ASGD")
"""torch optimizers whose state has no `momentum_buffer` or dense `exp_avg` whatever their settings."""


def innermost(optimizer: Any) -> Any:
    """The optimizer that owns the state: accelerate's AcceleratedOptimizer (and similar wrappers) looked through."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def first_moment_problem(optimizer: Any) -> str | None:
    """Why `optimizer` will never hold a first moment, from its class and settings (before its first step), or
    None when it may: an unknown optimizer is judged by its state once it has one (`first_moments`)."""
    inner = innermost(optimizer)
    name = type(inner).__name__
    groups = getattr(inner, "param_groups", [])
    if name in ("SGD", "RMSprop") and any(not group.get("momentum") for group in groups):
        return f"{name} with momentum=0 keeps no momentum_buffer"
    if name == "Adafactor" and any(group.get("beta1") is None for group in groups):
        return "Adafactor without beta1 keeps no exp_avg"
    if name in NEVER_A_FIRST_MOMENT:
        return f"{name} keeps no first moment"
    if type(inner).__module__.split(".")[0] == "bitsandbytes":  # 8-bit states: `state1`, quantized in blocks
        return f"{name} (bitsandbytes) keeps its first moment quantized, not as a tensor per parameter"
    return None


ADAM_RADIUS_LIMIT = 1.0
"""The global radius from which the momentum study (docs/cheap-amp.md) saw AdamW training wrecked."""


def adam_family(optimizer: Any) -> str | None:
    """The optimizer's class name (wrappers looked through) when it is of the Adam family, else None: what both
    warnings of radii known to wreck Adam-family training read (the reference defaults', the momentum direction's)."""
    name = type(innermost(optimizer)).__name__ if optimizer is not None else ""
    return name if "adam" in name.lower() else None


def warn_if_radius_misfits(config: Any, optimizer: Any) -> None:
    """Warns of a global momentum radius the momentum study saw wreck AdamW training (ε ≥ 1 left a ViT from scratch
    far above ERM's error and MiniLM fine-tuning at chance). `msam`'s ε = 3 is Momentum-SAM's radius for SGD, so
    `--candidates msam` on a transformer script meets exactly this. Call it on the main process, optimizer known."""
    if not (config.enabled and config.direction == "momentum" and config.norm == "global"):
        return
    name = adam_family(optimizer)
    if config.epsilon < ADAM_RADIUS_LIMIT or name is None:
        return
    logger.warning(
        f"amp_direction='momentum' on the global ball at amp_epsilon={config.epsilon:g} with {name}: in the momentum "
        f"study (docs/cheap-amp.md) a global radius >= {ADAM_RADIUS_LIMIT:g} wrecked AdamW training (a ViT from "
        "scratch, MiniLM fine-tuning); amp_epsilon=0.1 trained in both, amp_norm='relative' at 0.01 in the ViT only. "
        "msam's 3 is Momentum-SAM's radius for SGD. Compare smaller radii on your task."
    )


def refusal(problem: str) -> str:
    """The error message for a `first_moment_problem`."""
    return (
        f"amp_direction='momentum' reads Δ from the optimizer's first moment, but {problem}, so every step would be "
        f"plain ERM. {WHAT_WORKS}."
    )


def first_moments(optimizer: Any, params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """The first moment of each of `params` in `optimizer`'s state; None where the state does not exist yet (before
    the first step, or a parameter the optimizer does not hold). A state without one is refused (`WHAT_WORKS`)."""
    if optimizer is None:
        return [None] * len(params)
    state = innermost(optimizer).state
    found: list[torch.Tensor | None] = []
    for p in params:
        entries = state.get(p)
        if not entries:
            found.append(None)
            continue
        moment = next((entries[key] for key in STATE_KEYS if torch.is_tensor(entries.get(key))), None)
        if moment is None:
            raise ValueError(refusal(f"{type(innermost(optimizer)).__name__}'s state holds {sorted(entries)}"))
        found.append(moment)
    return found
