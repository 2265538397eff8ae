"""Training methods: ERM, or AMP with a set of AMPTrainingArguments keywords; the named settings several studies
share; and the one cost model of a setting, forward/backward passes per step.

To add a method: `amp("name", norm=..., epsilon=..., ...)` (keywords without the `amp_` prefix) in the study that
tries it; put it here only when two studies use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Method:
    """A training method: ERM (no args) or AMP with these AMPTrainingArguments keywords."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()
    start: float = 0.0
    """amp_start_step as a fraction of the run's optimizer steps."""

    @property
    def kwargs(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.args}

    @property
    def is_erm(self) -> bool:
        return not self.args


def amp(name: str, start: float = 0.0, **kwargs: Any) -> Method:
    """An AMP method: `amp_` + each keyword (K = 1 unless `inner_steps` says otherwise); lists are kept as tuples so
    that the method stays hashable."""
    args = {"amp_inner_steps": 1, **{f"amp_{k}": tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}}
    return Method(name, tuple(sorted(args.items())), start)


ERM = Method("ERM")
REFERENCE = {"norm": "tensor", "inner_lr": 1.0, "epsilon": 0.5}
"""The reference defaults (ε = 0.5 per tensor, ζ = 1; K = 1): AMPTrainingArguments' own defaults."""
DEFAULTS = amp("AMP defaults", **REFERENCE)
EIGHTH = amp("f=0.125", ascent_fraction=0.125, **REFERENCE)
"""cnn_long_noisy@1 (the ascent on 1/8 of each micro-batch); its name and settings are the frontier studies', so the
records of every study that runs it share their keys."""
SAM_GLOBAL = amp("sam_global ε=0.05", norm="global", inner_lr=100.0, epsilon=0.05)
"""SAM's ball and ρ: one global ball, Δ on its sphere (ζ = 100); the transfer study's best text candidate."""
ASAM = amp("asam ε=0.5", norm="elementwise", inner_lr=100.0, epsilon=0.5)
"""ASAM's elementwise ball at its usual ρ (ζ = 100); the transfer study's best ViT candidate."""


def passes_per_step(args: dict[str, Any], start: float = 0.0) -> float:
    """Forward/backward passes per micro-batch, averaged over the run: 1 for ERM, 1 + f·K on AMP steps (an ascent on
    a fraction f of the micro-batch costs about f of a pass), AMP on every `interval`-th step after `start` of the
    run. benchmarks/cost.py measured AMP's step at this many ERM passes to within ~5-8% on CPU. The momentum
    direction (`amp_direction='momentum'`) runs no ascent pass: 1."""
    k = args.get("amp_inner_steps", 1)
    if not args or k == 0 or args.get("amp_epsilon", 1) == 0 or args.get("amp_direction") == "momentum":
        return 1.0
    return 1 + args.get("amp_ascent_fraction", 1.0) * k * (1 - start) / args.get("amp_interval", 1)
