"""The AMP inner maximisation, read top to bottom (amp-spec.md, steps 1 to 4).

    g ← ∇L_B(θ)                                    clean pass
    Δ ← 0
    repeat K times:
        Δ ← Δ + ζ·g                                raw gradient, no sign, no normalisation
        Δ ← project(Δ) onto the ball of radius ε   per tensor (reference), over all tensors (paper), or per
                                                   tensor with radius ε·‖θ_p‖ ("relative")
        θ ← θ_saved + Δ;  g ← ∇L_B(θ)              the last of these gradients is the caller's descent pass
    θ ← θ_saved                                    exactly: copied back, never θ + Δ − Δ

`perturbed_weights` is a context manager: it runs the clean pass and the K − 1 intermediate ascent passes itself,
leaves the weights at θ + Δ inside the `with` block, where the caller takes the descent gradient its own way (the
Trainer's loss path and backward), and copies θ back on exit, also when anything raises. Knowing nothing of the
Trainer, it is also what the sharpness tools use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .config import AMPConfig

GradientFn = Callable[[], tuple[torch.Tensor, Sequence[torch.Tensor]]]
"""Returns (mean loss, ∇ mean loss per perturbed parameter) at the parameters' current values."""

PROJECTION_EPS = 1e-12
"""Added to a norm before dividing by it, as the reference does."""


@dataclass
class AscentResult:
    """What one inner maximisation saw, for logging. Tensors stay on the device (no host sync per step)."""

    clean_loss: torch.Tensor | None = None
    """L_B(θ), the loss of the clean pass."""
    delta_norm: torch.Tensor | None = None
    """‖Δ‖₂ over all perturbed tensors together, after projection; 0 when skipped."""
    skipped: bool = False
    """True when a loss or gradient of the ascent was not finite: the weights then stay at θ (plain ERM)."""


def _norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖t‖₂ of each tensor, stacked, in float32 at least (float64 tensors keep float64)."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=dtype))


def project_(
    deltas: list[torch.Tensor], epsilon: float, norm: str, theta_norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Projects Δ in place onto the ball(s) of radius ε; returns the norm of each tensor after projection.

    Per tensor: if ‖Δ_p‖ > ε then Δ_p ← ε·Δ_p / (‖Δ_p‖ + 1e-12). Global: the same with ‖Δ‖ over all tensors, one
    factor for all. Relative: per tensor, with radius ε·‖θ_p‖ (`theta_norms`), so a tensor at zero stays put.
    Factors are computed on the device, so no value travels to the host.
    """
    norms = _norms(deltas)
    if norm == "global":
        reference, radius = torch.linalg.vector_norm(norms).expand_as(norms), epsilon
    elif norm == "relative":
        if theta_norms is None:
            raise ValueError("amp_norm='relative' needs the norms of the unperturbed weights")
        reference, radius = norms, epsilon * theta_norms.to(norms)
    else:
        reference, radius = norms, epsilon
    factors = torch.where(reference > radius, radius / (reference + PROJECTION_EPS), torch.ones_like(reference))
    torch._foreach_mul_(deltas, list(factors.unbind()))
    return norms * factors


def _set_weights_(
    params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor], at_theta: bool
) -> None:
    """θ ← θ_saved + Δ, written into the parameters' own storage (no copy needed while they still hold θ)."""
    with torch.no_grad():
        if not at_theta:
            torch._foreach_copy_(list(params), list(saved))
        torch._foreach_add_(list(params), list(deltas))


def _restore_(params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        torch._foreach_copy_(list(params), list(saved))


@contextmanager
def perturbed_weights(
    params: Sequence[torch.Tensor], gradient_fn: GradientFn, config: AMPConfig
) -> Iterator[AscentResult]:
    """Moves `params` to θ + Δ for the duration of the `with` block and back to θ, bit for bit, afterwards.

    `gradient_fn` is called K times (the clean pass, then K − 1 intermediate passes); it must not write `.grad`
    (use `torch.autograd.grad`), so that gradients accumulated by earlier micro-batches stay untouched. If a loss or
    gradient is not finite, the weights stay at θ and `result.skipped` is set, so no NaN ever reaches them.
    """
    params = list(params)
    result = AscentResult()
    if not params or not config.enabled:
        yield result
        return

    saved = [p.detach().clone() for p in params]  # θ, restored by copy: exact in any dtype
    theta_norms = _norms(saved) if config.norm == "relative" else None
    try:
        deltas: list[torch.Tensor] | None = None
        for step in range(config.inner_steps):
            loss, grads = gradient_fn()
            if step == 0:
                result.clean_loss = loss.detach()
            # Δ ← Δ + ζ·g. The gradient tensors are fresh, so the first step reuses them as Δ's storage.
            if deltas is None:
                deltas = list(grads)
                torch._foreach_mul_(deltas, config.inner_lr)
            else:
                torch._foreach_add_(deltas, list(grads), alpha=config.inner_lr)
            del grads
            norms = project_(deltas, config.epsilon, config.norm, theta_norms)
            # One host sync per inner step: a non-finite loss or gradient (an fp16 overflow, say) aborts the ascent.
            if not bool(torch.isfinite(loss) & torch.isfinite(norms).all()):
                _restore_(params, saved)
                result.skipped = True
                result.delta_norm = torch.zeros((), device=norms.device)
                break
            _set_weights_(params, saved, deltas, at_theta=step == 0)
            result.delta_norm = torch.linalg.vector_norm(norms)
        del deltas  # not needed by the descent pass: free it before the caller's backward
        yield result
    finally:
        _restore_(params, saved)
