"""Training-argument classes that carry the AMP fields.

`AMPArgumentsMixin` holds the fields; mix it in front of any `TrainingArguments` subclass (Seq2Seq, TRL's configs) so
that `HfArgumentParser` exposes `--amp_epsilon` and friends as flags and bad values fail when the arguments are built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from .config import NORMS, AMPConfig


@dataclass
class AMPArgumentsMixin:
    """The AMP fields. Put this class first in the bases: `class MyArgs(AMPArgumentsMixin, TrainingArguments)`."""

    amp_epsilon: float = field(
        default=AMPConfig.epsilon,
        metadata={"help": "Radius ε of the perturbation ball (>= 0; 0 turns AMP off). Reference default 0.5."},
    )
    amp_inner_steps: int = field(
        default=AMPConfig.inner_steps,
        metadata={"help": "Inner gradient-ascent steps K per micro-batch (>= 0; 0 turns AMP off)."},
    )
    amp_inner_lr: float = field(
        default=AMPConfig.inner_lr,
        metadata={"help": "Inner learning rate ζ multiplying the raw ascent gradient (> 0)."},
    )
    amp_norm: str = field(
        default=AMPConfig.norm,
        metadata={
            "help": "Shape of the perturbation ball: 'tensor' = one ball of radius ε per parameter tensor (the "
            "reference implementation); 'global' = one ball over all perturbed tensors (the paper's algorithm box); "
            "'relative' = one ball per tensor of radius ε times that tensor's norm (ε is then a fraction, e.g. 0.02); "
            "'elementwise' = ASAM's scale-invariant ball over all perturbed tensors, ‖Δ / (|θ| + 0.01)‖₂ <= ε, with "
            "the ascent step ζ·(|θ| + 0.01)²·g (use a large amp_inner_lr, e.g. 100, for ASAM's normalised step).",
            "choices": list(NORMS),
        },
    )
    amp_interval: int = field(
        default=AMPConfig.interval,
        metadata={"help": "Apply AMP on every n-th optimizer step; the others are plain ERM steps (>= 1)."},
    )
    amp_start_step: int = field(
        default=AMPConfig.start_step,
        metadata={"help": "Train with plain ERM before this optimizer step (>= 0)."},
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
    amp_ascent_fraction: float = field(
        default=AMPConfig.ascent_fraction,
        metadata={
            "help": "Share f in (0, 1] of each micro-batch that the ascent passes use (its first ceil(f*B) examples); "
            "the descent pass uses all of it. An AMP step then costs about 1 + f*K passes instead of 1 + K."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # the TrainingArguments checks first, then ours
        self.amp_config  # noqa: B018 - building it validates every amp_* field, naming the bad one

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
