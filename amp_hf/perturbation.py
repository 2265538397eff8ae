"""The AMP inner maximisation, read top to bottom (amp-spec.md, steps 1 to 4).

    g ← ∇L_B(θ)                                    clean pass
    Δ ← 0
    repeat K times:
        Δ ← Δ + ζ·g                                raw gradient, no sign, no normalisation
                                                   ("elementwise", ASAM: Δ ← Δ + ζ·T²⊙g, T = |θ| + 0.01)
        Δ ← project(Δ) onto the ball of radius ε   per tensor (reference), over all tensors (paper), per
                                                   tensor with radius ε·‖θ_p‖ ("relative"), or ‖Δ/T‖ ≤ ε over
                                                   all tensors ("elementwise")
        θ ← θ_saved + Δ;  g ← ∇L_B(θ)              the last of these gradients is the caller's descent pass
                                                   (the last projection is fused into θ_saved + Δ)
    θ ← θ_saved                                    exactly: copied back, never θ + Δ − Δ

The momentum direction (amp_direction="momentum", Momentum-SAM's perturbation, Becker et al. 2024), with no pass of
its own:

    m ← the optimizer's first moment               SGD's momentum_buffer, the Adam family's exp_avg; a tensor
                                                   without one yet keeps Δ = 0 (`first_moment.py`)
    Δ ← −m ("elementwise": −T²⊙m)                  the sign of the optimizer's next step, θ − lr·m
    Δ ← Δ scaled onto the sphere of the ball       the same balls as above, always on the boundary: m's length
                                                   says nothing about how far to look
    θ ← θ_saved + Δ;  g ← ∇L_B(θ)                  the caller's one pass, the one ERM makes anyway
    θ ← θ_saved                                    exactly, as above

`perturbed_weights` is a context manager: it runs the clean pass and the K − 1 intermediate ascent passes itself,
leaves the weights at θ + Δ inside the `with` block, where the caller takes the descent gradient its own way (the
Trainer's loss path and backward), and copies θ back on exit, also when anything raises. Knowing nothing of the
Trainer, it is also what the sharpness tools use. `momentum_perturbed_weights` is its counterpart for the momentum
direction: the same block, θ + Δ inside, θ after, with Δ given instead of found.

Sharded parameters (FSDP2 DTensors, ZeRO-3 partitions; `sharding.py`) are perturbed part by part: every step above
is elementwise except the norms, which must be those of the whole tensors. `_norms` takes them from the local parts
and sums the squares over the process group the tensors are split over.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.profiler import record_function

from .config import AMPConfig
from .sharding import Layout, layout, local_shards

GradientFn = Callable[[], tuple[torch.Tensor, Sequence[torch.Tensor]]]
"""Returns (mean loss, ∇ mean loss per perturbed parameter) at the parameters' current values."""

PROJECTION_EPS = 1e-12
"""Added to a norm before dividing by it, as the reference does."""

ELEMENTWISE_ETA = 0.01
"""ASAM's η: the elementwise scale is T = |θ| + η, so a weight at zero can still move (Kwon et al., 2021)."""


@dataclass
class AscentResult:
    """What one inner maximisation saw, for logging. Tensors stay on the device (no host sync per step)."""

    clean_loss: torch.Tensor | None = None
    """L_B(θ), the loss of the clean pass."""
    delta_norm: torch.Tensor | None = None
    """‖Δ‖₂ over all perturbed tensors together, after projection (‖Δ/T‖₂ for 'elementwise'); 0 when skipped."""
    skipped: bool = False
    """True when a loss or gradient of the ascent was not finite: the weights then stay at θ (plain ERM)."""
    group: dist.ProcessGroup | None = field(default=None, repr=False)
    """The processes that take every decision together (skip a non-finite ascent, fall back in the descent): the
    caller's `agree_over`, else the group the parameters are sharded over (FSDP2, ZeRO-3); None: this process alone."""
    restore: Callable[[], None] = field(default=lambda: None, repr=False)
    """Puts θ back now, inside the `with` block (the exit puts it back anyway)."""
    moved: bool = False
    """True once the weights were set to θ + Δ: the block's pass is then a perturbed one (unless `skipped`)."""


# ------------------------------------------------------------------------------------ sharded parameters
# Under FSDP2 and ZeRO-3 each process holds a part of each tensor (`sharding.py`). Everything elementwise (Δ ← Δ + ζ·g,
# θ + Δ, the restore) works on the local parts as they are. A norm does not: ‖t‖² is the sum over the parts of
# ‖part‖², so the squared local norms are summed over the process group the tensors are split over.


def _norms(tensors: Sequence[torch.Tensor], group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """‖t‖₂ of each tensor, stacked, in float32 at least (float64 tensors keep float64).

    With a `group`, `tensors` are local shards and the norms are those of the whole tensors: the squared local norms
    are summed over the group (one all-reduce for all tensors), so every process gets the same norms.
    """
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    norms = torch.stack(torch._foreach_norm(list(tensors), 2, dtype=dtype))
    if group is None:
        return norms
    squares = norms.square()
    dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=group)
    return squares.sqrt()


def on_every_process(flag: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """True where `flag` holds on every process of `group`: shards must all skip a non-finite ascent, or none."""
    if group is None:
        return flag
    agreed = flag.to(torch.int32)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=group)
    return agreed.bool()


# ------------------------------------------------------------------------------------------ the inner maximisation
def elementwise_scales(theta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """ASAM's T = |θ| + η per element, for amp_norm='elementwise' (one θ-sized temporary during the ascent)."""
    with torch.no_grad():
        scales = torch._foreach_abs(list(theta))
        torch._foreach_add_(scales, ELEMENTWISE_ETA)
    return scales


def projection_factors(
    deltas: list[torch.Tensor],
    epsilon: float,
    norm: str,
    theta_norms: torch.Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    scales: Sequence[torch.Tensor] | None = None,
    onto_sphere: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(factor, norm) per tensor: Δ_p·factor_p is Δ_p projected onto its ball; the norm is ‖Δ_p‖ before projecting.
    `onto_sphere`: scaled onto the ball's boundary also from inside it (the momentum direction: a direction only).

    Per tensor: if ‖Δ_p‖ > ε the factor is ε / (‖Δ_p‖ + 1e-12), else 1. Global: the same with ‖Δ‖ over all tensors,
    one factor for all. Relative: per tensor, with radius ε·‖θ_p‖ (`theta_norms`), so a tensor at zero stays put.
    Elementwise: global, with ‖Δ_p / T_p‖ (`scales`, from `elementwise_scales`) as each tensor's norm.
    Factors are computed on the device, so no value travels to the host. With a `group`, `deltas` are local shards
    and every norm is the whole tensor's (see `_norms`), so each process scales its shard by the whole tensor's factor.
    """
    if norm == "elementwise":
        if scales is None:
            raise ValueError("amp_norm='elementwise' needs the elementwise scales |θ| + 0.01")
        norms = _norms(torch._foreach_div(deltas, list(scales)), group)
    else:
        norms = _norms(deltas, group)
    if norm in ("global", "elementwise"):
        reference, radius = torch.linalg.vector_norm(norms).expand_as(norms), epsilon
    elif norm == "relative":
        if theta_norms is None:
            raise ValueError("amp_norm='relative' needs the norms of the unperturbed weights")
        reference, radius = norms, epsilon * theta_norms.to(norms)
    else:
        reference, radius = norms, epsilon
    factors = radius / (reference + PROJECTION_EPS)
    if not onto_sphere:
        factors = torch.where(reference > radius, factors, torch.ones_like(reference))
    return factors, norms


def _set_weights_(
    params: Sequence[torch.Tensor],
    saved: Sequence[torch.Tensor],
    deltas: Sequence[torch.Tensor],
    at_theta: bool,
    factors: torch.Tensor | None = None,
) -> None:
    """θ ← θ_saved + Δ (or + factors·Δ), written into the parameters' own storage (no copy while they still hold θ).

    With `factors`, Δ's projection is fused into the addition: one pass over the parameters' memory fewer than
    scaling Δ in place first, for a Δ that is not needed afterwards.
    """
    with torch.no_grad():
        if not at_theta:
            torch._foreach_copy_(list(params), list(saved))
        if factors is None:
            torch._foreach_add_(list(params), list(deltas))
        else:
            torch._foreach_addcmul_(list(params), list(deltas), list(factors.unbind()))


def _restore_(params: Sequence[torch.Tensor], saved: Sequence[torch.Tensor], parts: Layout) -> None:
    with torch.no_grad():
        torch._foreach_copy_(list(params), list(saved))
    parts.written()


def owned(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`tensors`, each cloned unless it is known plain and owned: not a view, dense, and not listed twice."""
    seen: set[int] = set()
    result = []
    for t in tensors:
        plain = not t._is_view() and t.is_contiguous() and t.data_ptr() not in seen
        seen.add(t.data_ptr())
        result.append(t if plain else t.clone(memory_format=torch.contiguous_format))
    return result


def save_buffers(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Storage for θ, one tensor per parameter (its local part when sharded), to pass as `perturbed_weights(saved=)`.

    A caller that perturbs the same parameters every step keeps these and so writes θ into memory it already owns:
    a fresh copy each step costs ~3× a copy into existing memory on CPU (new pages are faulted in and zeroed first):
    18 ms against 6 ms per step on MiniLM-L6. The peak memory is the same; the buffers just live between steps too.
    """
    with torch.no_grad():
        return [torch.empty_like(p) for p in layout(params).local]


class ThetaBuffers:
    """`save_buffers` kept between steps: allocated once for a set of perturbed tensors, reused while the set (and each
    local part's shape, dtype and device) stays the same, reallocated when it changes (unfreezing, a new model).
    Shared by the Trainer glue and the custom-loop API, which both perturb the same parameters step after step."""

    def __init__(self) -> None:
        self._key: list[tuple] | None = None
        self.buffers: list[torch.Tensor] | None = None

    def for_params(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        key = [(id(p), t.shape, t.dtype, t.device) for p, t in zip(params, layout(params).local)]
        if self.buffers is None or self._key != key:
            self.buffers = None  # free the old buffers before allocating new ones
            self.buffers, self._key = save_buffers(params), key
        return self.buffers


def _save_theta(
    params: list[torch.Tensor], saved: Sequence[torch.Tensor] | None, parts: Layout, result: AscentResult
) -> list[torch.Tensor]:
    """θ copied into `saved` (or a fresh copy), and `result.restore` set to copy it back."""
    if saved is None:
        saved = [p.detach().clone() for p in params]  # θ, restored by copy: exact in any dtype
    else:
        saved = list(saved)
        torch._foreach_copy_(saved, params)
    result.restore = functools.partial(_restore_, params, saved, parts)
    return saved


@contextmanager
def perturbed_weights(
    params: Sequence[torch.Tensor],
    gradient_fn: GradientFn,
    config: AMPConfig,
    saved: Sequence[torch.Tensor] | None = None,
    agree_over: dist.ProcessGroup | None = None,
) -> Iterator[AscentResult]:
    """Moves `params` to θ + Δ for the duration of the `with` block and back to θ, bit for bit, afterwards.

    `gradient_fn` is called K times (the clean pass, then K − 1 intermediate passes); it must not leave anything in
    `.grad` (use `torch.autograd.grad`, or put `.grad` back as it was), so that gradients accumulated by earlier
    micro-batches stay untouched. If a loss or gradient is not finite, the weights stay at θ and `result.skipped` is
    set, so no NaN ever reaches them. `saved`, from `save_buffers(params)`, is where θ is kept (default: a fresh copy).

    `agree_over`: the processes that must all skip or all go on (the whole world in a distributed run): a process
    that skips while another takes one more ascent pass would make a different number of collective calls (DDP,
    SyncBatchNorm, a `compute_loss` that gathers metrics) and hang. Default: the group the parameters are sharded
    over, which must agree in any case. Sharded `params` (FSDP2, ZeRO-3: see the module) take from `gradient_fn`
    each process's part of the gradient averaged over the processes.
    """
    params = list(params)
    result = AscentResult()
    if not params or not config.enabled:
        yield result
        return

    # The phases are named for torch.profiler (`amp.*`): `python -m benchmarks.cost --profile` splits a step by them.
    parts = layout(params)  # the local parts (FSDP2 shards, ZeRO-3 partitions) and the group of the whole tensors
    params, group = parts.local, parts.group
    result.group = decide_over = agree_over if agree_over is not None else group
    with record_function("amp.save"), torch.no_grad():
        saved = _save_theta(params, saved, parts, result)
        theta_norms = _norms(saved, group) if config.norm == "relative" else None
        scales = elementwise_scales(saved) if config.norm == "elementwise" else None
    try:
        deltas: list[torch.Tensor] | None = None
        for step in range(config.inner_steps):
            with record_function("amp.ascent_pass"):
                loss, grads = gradient_fn()
            if step == 0:
                result.clean_loss = loss.detach()
            with record_function("amp.step_and_project"):
                # Δ ← Δ + ζ·g. A gradient that is plain and owned is written in place (the first step reuses it as
                # Δ's storage); autograd may return views (a stride-0 expanded gradient) or one tensor twice.
                grads = owned(local_shards(grads))
                if scales is not None:  # ASAM's step: ζ·T²⊙g
                    torch._foreach_mul_(grads, scales)
                    torch._foreach_mul_(grads, scales)
                if deltas is None:
                    deltas = grads
                    if config.inner_lr != 1.0:  # ζ = 1 is the default: skip a pass over the parameters' memory
                        torch._foreach_mul_(deltas, config.inner_lr)
                else:
                    torch._foreach_add_(deltas, grads, alpha=config.inner_lr)
                del grads
                factors, norms = projection_factors(deltas, config.epsilon, config.norm, theta_norms, group, scales)
                norms = norms * factors  # after projection
                # One host sync per inner step: a non-finite loss or gradient (an fp16 overflow) aborts the ascent.
                finite = bool(on_every_process(torch.isfinite(loss) & torch.isfinite(norms).all(), decide_over))
            if not finite:
                _restore_(params, saved, parts)
                result.skipped = True
                result.delta_norm = torch.zeros((), device=norms.device)
                break
            with record_function("amp.set_weights"):
                if step < config.inner_steps - 1:  # Δ is kept for the next ascent step: project it in place
                    torch._foreach_mul_(deltas, list(factors.unbind()))
                    _set_weights_(params, saved, deltas, at_theta=step == 0)
                else:  # the last Δ is not kept: θ_saved + factors·Δ, its projection fused into the addition
                    _set_weights_(params, saved, deltas, at_theta=step == 0, factors=factors)
                parts.written()
                result.moved = True
                result.delta_norm = torch.linalg.vector_norm(norms)
        del deltas, scales  # not needed by the descent pass: free them before the caller's backward
        yield result
    finally:
        with record_function("amp.restore"):
            _restore_(params, saved, parts)


@contextmanager
def momentum_perturbed_weights(
    params: Sequence[torch.Tensor],
    momenta: Sequence[torch.Tensor | None],
    config: AMPConfig,
    saved: Sequence[torch.Tensor] | None = None,
    agree_over: dist.ProcessGroup | None = None,
) -> Iterator[AscentResult]:
    """Moves `params` to θ − m scaled onto the sphere of the configured ball for the `with` block, θ afterwards.

    `momenta[i]` is the optimizer's first moment of `params[i]` (its local shard's counterpart when sharded: FSDP2
    keeps the state as DTensors like the parameters), None where the optimizer holds none yet: that tensor keeps
    Δ = 0 and is left out of the ball's norms. No gradient is taken here: the block's pass is the only one.

    `agree_over` only becomes `result.group`, the processes that decide the descent's fall-back together: the skip
    of a non-finite momentum is decided over the shards' group alone (replicated state, as under DDP, gives every
    process the same Δ and the same decision, with no communication).
    """
    params = list(params)
    result = AscentResult()
    if not params or not config.enabled:
        yield result
        return
    parts = layout(params)
    params, group = parts.local, parts.group
    result.group = agree_over if agree_over is not None else group
    moving = [i for i, m in enumerate(momenta) if m is not None]
    with record_function("amp.save"), torch.no_grad():
        saved = _save_theta(params, saved, parts, result)
    try:
        if moving:
            with record_function("amp.step_and_project"), torch.no_grad():
                theta = [saved[i] for i in moving]
                direction = local_shards([momenta[i] for i in moving])
                theta_norms = _norms(theta, group) if config.norm == "relative" else None
                scales = elementwise_scales(theta) if config.norm == "elementwise" else None
                if scales is not None:  # ASAM's scaling of a step, T²⊙m, and its ball ‖Δ/T‖ (a copy of m)
                    direction = torch._foreach_mul(direction, scales)
                    torch._foreach_mul_(direction, scales)
                factors, norms = projection_factors(
                    direction, config.epsilon, config.norm, theta_norms, group, scales, onto_sphere=True
                )
                norms = norms * factors  # after scaling: ε for every ball but 'relative' (ε·‖θ_p‖ per tensor)
                finite = bool(on_every_process(torch.isfinite(norms).all(), group))  # one host sync per step
            if finite:
                with record_function("amp.set_weights"):  # θ_saved − factors·m, the sign fused into the factors
                    _set_weights_([params[i] for i in moving], theta, direction, at_theta=True, factors=-factors)
                    parts.written()
                result.moved = True
                result.delta_norm = torch.linalg.vector_norm(norms)
            else:
                result.skipped = True
                result.delta_norm = torch.zeros((), device=norms.device)
            del direction, scales
        yield result
    finally:
        with record_function("amp.restore"):
            _restore_(params, saved, parts)
