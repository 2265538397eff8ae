"""The AMP hyper-parameters as one validated value.

`AMPConfig` is what the perturbation code and the trainer read. It is built from any `TrainingArguments`
(`AMPConfig.from_args`), so that a plain `TrainingArguments` handed to `AMPTrainer` still works with the defaults, and
it owns the validation, so that the argument classes and the trainer reject bad values with the same messages.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

NORMS = ("tensor", "global", "relative", "elementwise")
"""Allowed `amp_norm` values: one ball per parameter tensor (reference), one ball over all of them (paper), one ball
per tensor whose radius is ε times that tensor's norm (scale-aware, in the spirit of AWP), or ASAM's elementwise
scale-invariant ball over all tensors (Kwon et al., ICML 2021): ‖Δ / (|θ| + 0.01)‖₂ ≤ ε."""

DIRECTIONS = ("gradient", "momentum")
"""Allowed `amp_direction` values: Δ from the gradient at θ (the paper's ascent, one extra pass per inner step), or
from the optimizer's first moment with the sign of its next step (Momentum-SAM's direction, no extra pass)."""

PATTERN_FIELDS = ("include", "exclude")
"""The fields that hold regular expressions over parameter names."""


@dataclass(frozen=True)
class AMPConfig:
    """AMP settings, named as in amp-spec.md. Field `x` corresponds to the training argument `amp_x`."""

    epsilon: float = 0.5
    inner_steps: int = 1
    inner_lr: float = 1.0
    norm: str = "tensor"
    interval: int = 1
    start_step: int = 0
    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    """Empty: every trainable parameter is a candidate; otherwise only those whose name matches one pattern."""
    ascent_fraction: float = 1.0
    """Share of each micro-batch (its first ⌈f·B⌉ examples) that the ascent passes use; the descent uses all of it."""
    direction: str = "gradient"
    """Where Δ comes from: the ascent gradient ("gradient") or the optimizer's first moment ("momentum", no ascent
    pass: the inner steps, their learning rate and the ascent fraction have nothing to act on, and are refused)."""

    def __post_init__(self) -> None:
        # Patterns first: argument parsers hand over lists, and a frozen dataclass wants a tuple.
        for name in PATTERN_FIELDS:
            object.__setattr__(self, name, _patterns(name, getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        def number(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"amp_{name} must be a finite number, got {value!r}")
            return float(value)

        def integer(name: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"amp_{name} must be an integer, got {value!r}")
            return value

        if number("epsilon", self.epsilon) < 0:
            raise ValueError(f"amp_epsilon must be >= 0 (0 turns AMP off), got {self.epsilon!r}")
        if integer("inner_steps", self.inner_steps) < 0:
            raise ValueError(f"amp_inner_steps must be an integer >= 0 (0 turns AMP off), got {self.inner_steps!r}")
        if number("inner_lr", self.inner_lr) <= 0:
            raise ValueError(f"amp_inner_lr must be > 0, got {self.inner_lr!r}")
        if self.norm not in NORMS:
            allowed = ", ".join(repr(n) for n in NORMS)
            raise ValueError(f"amp_norm must be one of {allowed}, got {self.norm!r}")
        if integer("interval", self.interval) < 1:
            raise ValueError(f"amp_interval must be an integer >= 1, got {self.interval!r}")
        if integer("start_step", self.start_step) < 0:
            raise ValueError(f"amp_start_step must be an integer >= 0, got {self.start_step!r}")
        fraction = number("ascent_fraction", self.ascent_fraction)
        if not 0 < fraction <= 1:
            raise ValueError(f"amp_ascent_fraction must be in (0, 1] (1 = the whole micro-batch), got {fraction!r}")
        if self.direction not in DIRECTIONS:
            allowed = ", ".join(repr(d) for d in DIRECTIONS)
            raise ValueError(f"amp_direction must be one of {allowed}, got {self.direction!r}")
        if self.direction == "momentum":
            self._validate_momentum()

    def _validate_momentum(self) -> None:
        """The fields that act on the ascent passes: with Δ read from the optimizer no such pass runs, so a value
        other than their neutral one would be silently ignored."""
        without_pass = "amp_direction='momentum' takes Δ from the optimizer's first moment and runs no ascent pass"
        if self.inner_steps > 1:
            raise ValueError(
                f"amp_inner_steps must be 1 (or 0: AMP off) with amp_direction='momentum', got {self.inner_steps!r}: "
                f"{without_pass}, so there are no inner steps to repeat. Use amp_direction='gradient' for K > 1."
            )
        if self.ascent_fraction != 1:
            raise ValueError(
                f"amp_ascent_fraction must be 1 with amp_direction='momentum', got {self.ascent_fraction!r}: "
                f"{without_pass}, so there is no ascent to cut to a share of the micro-batch (the one pass already "
                "costs what ERM's does)."
            )
        if self.inner_lr != 1:
            raise ValueError(
                f"amp_inner_lr must be 1 with amp_direction='momentum', got {self.inner_lr!r}: {without_pass}; Δ is "
                "the momentum scaled onto the sphere of radius amp_epsilon, so only amp_epsilon sets its size."
            )

    @property
    def enabled(self) -> bool:
        """False when the settings make AMP plain ERM (K = 0 or ε = 0): then no extra pass runs at all."""
        return self.inner_steps > 0 and self.epsilon > 0

    def applies_at(self, global_step: int) -> bool:
        """Whether the optimizer step numbered `global_step` (0-based, steps already taken) is an AMP step."""
        if not self.enabled or global_step < self.start_step:
            return False
        return (global_step - self.start_step) % self.interval == 0

    def is_excluded(self, *names: str) -> bool:
        """Whether `amp_exclude` matches a parameter known by `names` (all its aliases, for tied weights)."""
        return any(re.search(pattern, name) for pattern in self.exclude for name in names)

    def selects(self, *names: str) -> bool:
        """Whether a trainable parameter known by `names` (all its aliases: a tied tensor has several) is perturbed:
        some alias matches `include` (if any), none matches `exclude`."""
        if self.include and not any(re.search(pattern, name) for pattern in self.include for name in names):
            return False
        return not self.is_excluded(*names)

    @classmethod
    def from_args(cls, args: Any) -> AMPConfig:
        """Reads the `amp_*` attributes of a (Training)Arguments object; missing ones take the defaults."""
        defaults = cls()
        values = {f.name: getattr(args, f"amp_{f.name}", getattr(defaults, f.name)) for f in fields(cls)}
        return cls(**values)

    @classmethod
    def missing_from(cls, args: Any) -> list[str]:
        """The `amp_*` argument names that `args` does not define (all of them for a plain TrainingArguments)."""
        return [f"amp_{f.name}" for f in fields(cls) if not hasattr(args, f"amp_{f.name}")]


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    """`amp_<name>` as a tuple of compiled-checked regular expressions; a clear error for anything else.

    A single string is one pattern. Lists and tuples of strings are accepted; everything else (numbers, dicts, bytes,
    sets, whose iteration would silently give keys, bytes or an arbitrary order) is refused.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError(
            f"amp_{name} must be a list of regular expressions (strings), e.g. ['bias', 'LayerNorm'], "
            f"got {type(value).__name__} {value!r}"
        )
    for pattern in value:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"amp_{name} entries must be non-empty regular expressions (strings), got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(
                f"amp_{name} entry {pattern!r} is not a valid regular expression ({err}); "
                "entries are matched with re.search against parameter names, e.g. 'bias' or 'LayerNorm'"
            ) from None
    return tuple(value)
