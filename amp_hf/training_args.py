"""Training-argument classes that carry the AMP fields.

`AMPArgumentsMixin` holds the fields; mix it in front of any `TrainingArguments` subclass (Seq2Seq, TRL's configs) so
that `HfArgumentParser` exposes `--amp_epsilon` and friends as flags and bad values fail when the arguments are built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from .config import DIRECTIONS, NORMS, AMPConfig
from .presets import SCALAR_ARGUMENTS, SETTING_NAMES, find_preset, method_names, resolve
from .presets import names as preset_names

logger = logging.getLogger(__name__)


@dataclass
class AMPArgumentsMixin:
    """The AMP fields. Put this class first in the bases: `class MyArgs(AMPArgumentsMixin, TrainingArguments)`."""

    amp_epsilon: float | None = field(
        default=None,
        metadata={"help": "Radius ε of the perturbation ball (>= 0; 0 turns AMP off). Default 0.5 (the reference)."},
    )
    amp_inner_steps: int | None = field(
        default=None,
        metadata={"help": "Inner gradient-ascent steps K per micro-batch (>= 0; 0 turns AMP off). Default 1."},
    )
    amp_inner_lr: float | None = field(
        default=None,
        metadata={"help": "Inner learning rate ζ multiplying the raw ascent gradient (> 0). Default 1."},
    )
    amp_norm: str | None = field(
        default=None,
        metadata={
            "help": "Shape of the perturbation ball: 'tensor' = one ball of radius ε per parameter tensor (the "
            "reference implementation); 'global' = one ball over all perturbed tensors (the paper's algorithm box); "
            "'relative' = one ball per tensor of radius ε times that tensor's norm (ε is then a fraction, e.g. 0.02); "
            "'elementwise' = ASAM's scale-invariant ball over all perturbed tensors, ‖Δ / (|θ| + 0.01)‖₂ <= ε, with "
            "the ascent step ζ·(|θ| + 0.01)²·g (use a large amp_inner_lr, e.g. 100, for ASAM's normalised step). "
            "Default 'tensor'.",
            "choices": list(NORMS),
        },
    )
    amp_interval: int | None = field(
        default=None,
        metadata={"help": "Apply AMP on every n-th optimizer step; the others are plain ERM steps (>= 1). Default 1."},
    )
    amp_start_step: int | None = field(
        default=None,
        metadata={"help": "Train with plain ERM before this optimizer step (>= 0). Default 0."},
    )
    amp_exclude: list[str] | None = field(
        default=None,
        metadata={
            "help": "Regular expressions (re.search on parameter names) of parameters never perturbed, given as "
            "separate words: --amp_exclude bias LayerNorm. Frozen parameters are never perturbed either. A pattern "
            "that matches no parameter is reported when training starts."
        },
    )
    amp_include: list[str] | None = field(
        default=None,
        metadata={
            "help": "Regular expressions of the only parameters perturbed (amp_exclude then removes from them), e.g. "
            "--amp_include norm LayerNorm layernorm to perturb the normalisation layers only (SAM-ON). "
            "Default: every trainable parameter."
        },
    )
    amp_ascent_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Share f in (0, 1] of each micro-batch that the ascent passes use (its first ceil(f*B) examples); "
            "the descent pass uses all of it. An AMP step then costs about 1 + f*K passes instead of 1 + K. BatchNorm "
            "running statistics are updated once per micro-batch, by the clean pass on the head at theta, the "
            "weights evaluation runs at (measured against the descent's at theta + delta: docs/arguments.md). "
            "Default 1."
        },
    )
    amp_direction: str | None = field(
        default=None,
        metadata={
            "help": "Where the perturbation comes from: 'gradient' = the ascent gradient at theta (AMP's inner "
            "maximisation, 1 + K passes per step); 'momentum' = the optimizer's first moment (SGD's momentum buffer, "
            "the Adam family's exp_avg) with the sign of its next step, scaled onto the sphere of the amp_norm ball of "
            "radius amp_epsilon (Momentum-SAM's direction: no extra pass, about ERM's cost; needs an optimizer with "
            "momentum; amp_inner_steps 1, amp_inner_lr 1 and amp_ascent_fraction 1, which it has no use for; "
            "theta + delta = theta until the optimizer's first step). Default 'gradient'.",
            "choices": list(DIRECTIONS),
        },
    )

    amp_preset: str | None = field(
        default=None,
        metadata={
            "help": "Fill every amp_* argument not given explicitly from a named, versioned preset of amp_hf.presets "
            f"({', '.join(n for n in preset_names() if n not in method_names())}; and the literature's methods at "
            f"their usual settings, candidates to compare rather than recommendations: {', '.join(method_names())}; "
            "'name@version' pins a version); explicit amp_* values win. "
            "Default: no preset (the reference defaults)."
        },
    )

    def __post_init__(self) -> None:
        self._resolve_amp_arguments()  # validates every amp_* field, naming the bad one
        super().__post_init__()

    def _resolve_amp_arguments(self) -> None:
        """Every amp_* field left at None takes the preset's value (or the default), as `presets.resolve` decides:
        afterwards all hold concrete values, and `amp_given` records which were given explicitly (None is how "not
        given" survives parsing). Bad values are refused here, naming the field."""
        given = {name: getattr(self, name) for name in SETTING_NAMES if getattr(self, name) is not None}
        self._amp_given = frozenset(given)
        config = resolve(self.amp_preset, given)
        if self.amp_preset is not None:
            preset = find_preset(self.amp_preset)
            if given and not config.enabled and not resolve(self.amp_preset).enabled:
                logger.warning(
                    "amp_preset=%r is plain ERM (amp_inner_steps=0): the explicit %s take effect only if "
                    "amp_inner_steps is given too",
                    self.amp_preset,
                    ", ".join(given),
                )
            logger.info(
                "amp_preset %s%s: %s (explicit, kept: %s)",
                preset.key,
                " (a method from the literature, not a recommendation)" if preset.is_method else "",
                dict(preset.settings),
                list(given) or "none",
            )
        for name in SCALAR_ARGUMENTS:
            if name not in given:
                setattr(self, name, getattr(config, name.removeprefix("amp_")))

    @property
    def amp_given(self) -> frozenset[str]:
        """The amp_* arguments given explicitly at construction (not filled from the preset or the defaults)."""
        return getattr(self, "_amp_given", frozenset())

    @property
    def amp_config(self) -> AMPConfig:
        """The validated AMP settings of these arguments."""
        return AMPConfig.from_args(self)


@dataclass
class AMPTrainingArguments(AMPArgumentsMixin, TrainingArguments):
    """`TrainingArguments` plus the AMP fields (`amp_epsilon`, `amp_inner_steps`, `amp_inner_lr`, `amp_norm`, ...)."""


@dataclass
class AMPSeq2SeqTrainingArguments(AMPArgumentsMixin, Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` plus the AMP fields."""
