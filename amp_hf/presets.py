"""Named, versioned AMP settings that the project's studies recommend, so a script can say what regime it is in.

`AMPTrainingArguments(amp_preset="cnn_long_noisy")` (or `--amp_preset cnn_long_noisy`) fills every `amp_*` argument
that was not given explicitly from the preset; explicit values win. `get_preset(name)` returns the same values as a
dict, for code that is not a `TrainingArguments` (a custom training loop, a config system).

A preset's values never change under the same version: a study that changes its recommendation ships the preset as
version + 1 and keeps the old one reachable as `"name@version"`, so a result recorded with `cnn_long_noisy@1` can be
reproduced after the recommendation moves. `name` alone is the newest version.

Each preset names the study entry it rests on (`benchmarks/results/recommended.json`, written by the benchmark that
chose it; tests/test_presets.py checks that the values shipped here match that file) and where its numbers are.

Two kinds: a *recommendation* is what a study chose for the case its `when` describes; a *method* (`sam`, `asam`) is
a method from the literature at its usual settings, named so that a comparison reads naturally
(`python -m amp_hf.compare --candidates sam asam msam cnn_long_noisy ...`). No study recommends a method: its evidence
says what the studies measured with it. `listing()` shows every preset with its kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from .config import PATTERN_FIELDS, AMPConfig

RECOMMENDATION = "recommendation"
"""The kind of a preset a study chose for the case its `when` describes."""
METHOD = "method"
"""The kind of a preset that is a literature method at its usual settings: a candidate, not a recommendation."""
KINDS = (RECOMMENDATION, METHOD)

EVIDENCE_FILE = "benchmarks/results/recommended.json"
"""The file, relative to the repository root, where the studies write the settings they chose and their numbers."""

SETTING_NAMES: tuple[str, ...] = tuple(f"amp_{f.name}" for f in fields(AMPConfig))
"""Every `amp_*` setting (the fields of `AMPTrainingArguments` but `amp_preset`), as `resolve` takes them."""
SCALAR_ARGUMENTS: tuple[str, ...] = tuple(
    name for name in SETTING_NAMES if name.removeprefix("amp_") not in PATTERN_FIELDS
)
"""The `amp_*` arguments a preset sets: all but the parameter patterns (`amp_include`, `amp_exclude`), which depend on
the model's parameter names and stay the user's."""

DEFAULT_ARGUMENTS: Mapping[str, Any] = MappingProxyType(
    {name: getattr(AMPConfig(), name.removeprefix("amp_")) for name in SCALAR_ARGUMENTS}
)
"""The values without a preset: the reference implementation's (ε = 0.5 per tensor, ζ = 1, K = 1, every step)."""


@dataclass(frozen=True)
class Preset:
    """One named recommendation: the `amp_*` values it sets (the rest keep the defaults), when to use it, and where the
    evidence is."""

    name: str
    version: int
    settings: Mapping[str, Any]
    """The `amp_*` values the preset sets, as the study wrote them (its entry's "args" in recommended.json)."""
    when: str
    """One line: the case it is for."""
    evidence: str
    """Where the numbers are, in a few words."""
    study_entry: str | None
    """The key of recommended.json whose "args" equal `settings`; None for a preset no study chose (`reference`, the
    methods)."""
    kind: str = RECOMMENDATION
    """`RECOMMENDATION` or `METHOD` (see the module's docstring)."""
    optimizer: str | None = None
    """The optimizer the study chose it with ("SGD + momentum", "AdamW"); None for a method, which names no regime.
    `optimizer_family` compares it with a run's optimizer: a preset used with another family is outside its regime."""
    pretrained: bool | None = None
    """Whether it was chosen fine-tuning pretrained weights (True) or training from scratch (False); None: no regime."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Preset {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == METHOD and self.study_entry is not None:
            raise ValueError(f"Preset {self.name}: a method is no study's recommendation; study_entry must be None")
        if self.kind == RECOMMENDATION and (self.optimizer is None or self.pretrained is None):
            raise ValueError(f"Preset {self.name}: a recommendation names its regime (optimizer and pretrained)")

    @property
    def is_method(self) -> bool:
        """Whether this is a method from the literature (a candidate to compare), not a recommendation."""
        return self.kind == METHOD

    def arguments(self) -> dict[str, Any]:
        """Every scalar `amp_*` argument: the defaults, overridden by the preset's settings."""
        return {**DEFAULT_ARGUMENTS, **self.settings}

    @property
    def regime(self) -> str | None:
        """The regime it was chosen in, in words ("SGD + momentum, from scratch"); None for a method."""
        if self.optimizer is None:
            return None
        start = {True: "fine-tuning pretrained weights", False: "from scratch", None: None}[self.pretrained]
        return ", ".join(part for part in (self.optimizer, start) if part)

    @property
    def key(self) -> str:
        """`name@version`, the exact reference to these values."""
        return f"{self.name}@{self.version}"


ERM = MappingProxyType({"amp_inner_steps": 0})
"""Plain ERM: no ascent pass, the Trainer's step bit for bit."""
REFERENCE = MappingProxyType(
    {"amp_epsilon": 0.5, "amp_inner_lr": 1.0, "amp_inner_steps": 1, "amp_norm": "tensor", "amp_ascent_fraction": 1.0}
)
"""The reference implementation's settings, written out (they are also the argument defaults)."""
SAM = MappingProxyType({"amp_inner_steps": 1, "amp_norm": "global", "amp_epsilon": 0.05, "amp_inner_lr": 100.0})
"""SAM (Foret et al., ICLR 2021) at its usual ρ = 0.05: K = 1, one ball over all perturbed tensors, and ζ = 100 so that
the first ascent step lands on the sphere (Δ = ρ·g/‖g‖ whenever ‖g‖ > ρ/ζ = 5e-4), SAM's normalised step. The values
of benchmarks/methods.py's SAM_GLOBAL, which the transfer and frontier studies measured."""
ASAM = MappingProxyType({"amp_inner_steps": 1, "amp_norm": "elementwise", "amp_epsilon": 0.5, "amp_inner_lr": 100.0})
"""ASAM (Kwon et al., ICML 2021) at its usual ρ = 0.5: the elementwise scale-invariant ball, ζ = 100 for its normalised
step. The values of the transfer study's "asam ε=0.5" (benchmarks/transfer.py)."""
MSAM = MappingProxyType({"amp_direction": "momentum", "amp_norm": "global", "amp_epsilon": 3.0, "amp_inner_steps": 1})
"""Momentum-SAM (Becker et al., 2024, arXiv 2401.12033) translated to these arguments: Δ = −ρ·m/‖m‖ with m the
optimizer's first moment and ‖·‖ over all perturbed tensors (the momentum direction, the global ball; no extra pass),
ρ = 3, the radius issue 32 quotes from the paper's SGD runs (about 15× SAM's 0.2 there; the paper tunes ρ per model
and optimizer, and its tables were not re-read for this preset). What a preset cannot carry: the paper turns the
perturbation off during the learning-rate warm-up, which here is amp_start_step = the run's warm-up steps (a number
that depends on the run, so left at 0: set it). Like the paper, every trainable parameter is perturbed."""

_ALL: tuple[Preset, ...] = (
    Preset(
        name="cnn_long_noisy",
        version=1,
        settings=MappingProxyType({**REFERENCE, "amp_ascent_fraction": 0.125}),
        when="a CNN trained (SGD) until plain training memorises noisy labels: its training loss goes to ~0 while "
        "validation error rises late; AMP's reference step with the ascent on an eighth of each micro-batch",
        evidence="frontier study: on held-out Fashion-MNIST 5k with 20% wrong labels, 40 epochs, 28% fewer test errors "
        "than ERM's final weights at 1.24x its time (docs/cheap-amp.md, benchmarks/results/frontier_long.json)",
        study_entry="cnn_long_noisy",
        optimizer="SGD + momentum",
        pretrained=False,
    ),
    Preset(
        name="vit_from_scratch",
        version=1,
        settings=ERM,
        when="a vision transformer trained from scratch with AdamW: plain ERM",
        evidence="transfer study: no AMP candidate beat ERM on both tuning seeds; the closest was worse on clean "
        "held-out MNIST and no evidence by compare's rule on noisy MNIST (docs/transfer-study.md)",
        study_entry="vit_from_scratch",
        optimizer="AdamW",
        pretrained=False,
    ),
    Preset(
        name="text_finetune",
        version=1,
        settings=ERM,
        when="fine-tuning a pretrained text encoder: plain ERM",
        evidence="transfer study: every candidate stalled on a tuning seed; the closest showed no evidence either way "
        "by compare's rule on held-out text, clean or with 20% wrong labels (docs/transfer-study.md)",
        study_entry="text_finetune",
        optimizer="AdamW",
        pretrained=True,
    ),
    Preset(
        name="finetune",
        version=1,
        settings=ERM,
        when="fine-tuning any pretrained model (text or vision): plain ERM; AMP's reference defaults collapse it",
        evidence="the text_finetune evidence (docs/transfer-study.md); no pretrained vision model was measured",
        study_entry="text_finetune",
        optimizer="AdamW",
        pretrained=True,
    ),
    Preset(
        name="cnn",
        version=1,
        settings=ERM,
        when="a BatchNorm CNN with SGD on a short schedule (ERM does not memorise the noise yet): plain ERM",
        evidence="transfer study's CNN control, Fashion-MNIST 5k, 20% wrong labels, 15 epochs: the reference defaults "
        "made 19% more test errors than early-stopped ERM (docs/transfer-study.md)",
        study_entry="cnn",
        optimizer="SGD + momentum",
        pretrained=False,
    ),
    Preset(
        name="reference",
        version=1,
        settings=REFERENCE,
        when="reproducing the paper: long CNN training with SGD (200 epochs); cnn_long_noisy keeps its gain at 1.2x "
        "ERM's time instead of ~1.9x",
        evidence="the paper's tables (docs/how-it-works.md); full AMP in the frontier study (docs/cheap-amp.md)",
        study_entry=None,
        optimizer="SGD + momentum",
        pretrained=False,
    ),
    Preset(
        name="sam",
        version=1,
        settings=SAM,
        when="a method, not a recommendation: SAM at the literature's usual ρ = 0.05 (global ball, K = 1, the ascent "
        "step on the sphere), as a candidate to compare with ERM on your task",
        evidence="not a recommendation; measured as sam_global ε=0.05 in the transfer study: no evidence by compare's "
        "rule on clean held-out text (-0.16 ± 1.14 points, 2/5 seeds) nor with 20% wrong labels (-2.12 ± 0.96, 3/3), "
        "and it stalled on a text tuning seed (docs/transfer-study.md, benchmarks/results/transfer.md)",
        study_entry=None,
        kind=METHOD,
    ),
    Preset(
        name="asam",
        version=1,
        settings=ASAM,
        when="a method, not a recommendation: ASAM at the literature's usual ρ = 0.5 (elementwise scale-invariant "
        "ball, K = 1, the ascent step on the sphere), as a candidate to compare with ERM on your task",
        evidence="not a recommendation; measured as asam ε=0.5 in the transfer study: 21% more test errors than ERM on "
        "clean held-out MNIST (0/3 seeds), no evidence by compare's rule with 20% wrong labels (-0.56 ± 1.23 points) "
        "(docs/transfer-study.md, benchmarks/results/transfer.md)",
        study_entry=None,
        kind=METHOD,
    ),
    Preset(
        name="msam",
        version=1,
        settings=MSAM,
        when="a method, not a recommendation: Momentum-SAM at ρ = 3, its radius with SGD (Δ = −ρ·m/‖m‖ along the "
        "optimizer's first moment, global ball, no extra pass: about ERM's cost; needs SGD with momentum or an Adam-"
        "family optimizer; set amp_start_step to your warm-up steps, as the paper does), as a candidate to compare "
        "with ERM on your task; with AdamW this radius is far too large (see evidence)",
        evidence="not a recommendation; the momentum study measured a neighbour (global ball, ε = 4, off for the first "
        "5% of the steps) on held-out noisy Fashion-MNIST: +0.61 ± 1.18 points of test error vs early-stopped ERM "
        "(2/5 seeds, no evidence), -3.67 ± 0.30 vs ERM's final weights (5/5, 56% of full AMP's cut), 1.03x ERM's "
        "training time; with AdamW, ε = 3 on the global ball left a ViT from scratch at 67% validation error and "
        "MiniLM fine-tuning at chance; ε = 0.1 (global) trained in both, without evidence of a gain on held-out tasks "
        "(docs/cheap-amp.md, benchmarks/results/momentum_study*.md)",
        study_entry=None,
        kind=METHOD,
    ),
)

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {p.name: max((q for q in _ALL if q.name == p.name), key=lambda q: q.version) for p in _ALL}
)
"""The newest version of each preset, by name."""


def optimizer_family(name: str) -> str:
    """The family of an optimizer, by its name or a preset's `optimizer` ("AdamW", "torch.optim.SGD", "SGD +
    momentum"): "adam" for the Adam family (Adam, AdamW, fused and 8-bit variants), "sgd" for SGD, else the name in
    lower case. A family, not a class: momentum and weight decay cannot be read from a class name."""
    lowered = name.lower().rsplit(".", 1)[-1]
    if "adam" in lowered:
        return "adam"
    if lowered.startswith("sgd"):
        return "sgd"
    return lowered


def names() -> list[str]:
    """The preset names `amp_preset` accepts (each also as `name@version`)."""
    return sorted(PRESETS)


def method_names() -> list[str]:
    """The presets that are methods from the literature (`sam`, `asam`, `msam`): candidates to compare, not
    recommendations."""
    return sorted(name for name, preset in PRESETS.items() if preset.is_method)


def listing() -> str:
    """One line per preset (newest versions): `name@version`, its kind, and when it is for; methods last."""
    ordered = sorted(PRESETS.values(), key=lambda p: (p.is_method, p.name))
    width = max(len(p.key) for p in ordered)
    return "\n".join(f"{p.key:<{width}}  {p.kind:<14}  {p.when}" for p in ordered)


def find_preset(name: str) -> Preset:
    """The preset called `name` (newest version) or `name@version`; a ValueError naming amp_preset otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"amp_preset must be a preset name (a string), one of {', '.join(names())}; got {name!r}")
    base, at, version = name.partition("@")
    if base not in PRESETS:
        raise ValueError(f"amp_preset must be one of {', '.join(names())} (or name@version), got {name!r}")
    if not at:
        return PRESETS[base]
    versions = {str(p.version): p for p in _ALL if p.name == base}
    if version not in versions:
        raise ValueError(f"amp_preset {name!r}: {base} has the versions {', '.join(sorted(versions))}")
    return versions[version]


def get_preset(name: str) -> dict[str, Any]:
    """The preset's values of every scalar `amp_*` argument (`amp_epsilon`, `amp_inner_steps`, ...), as a new dict."""
    return find_preset(name).arguments()


def resolve(preset: str | None = None, explicit: Mapping[str, Any] | None = None) -> AMPConfig:
    """The validated `AMPConfig` of `preset` (a name or `name@version`; None: the reference defaults) with the
    `explicit` `amp_*` values (`{"amp_epsilon": 0.1}`) winning over the preset's, also when equal to the defaults.

    The one place where a preset and explicit settings become AMP's settings: `AMPTrainingArguments`, the custom-loop
    `AMP`, `preset_config` and compare's candidates and report all call it, so they cannot disagree on what a preset
    plus a flag means. Unknown names and bad values are refused with a ValueError naming the `amp_*` field."""
    given = dict(explicit or {})
    unknown = sorted(set(given) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; allowed: {', '.join(SETTING_NAMES)}")
    values = {**(DEFAULT_ARGUMENTS if preset is None else find_preset(preset).arguments()), **given}
    return AMPConfig(**{name.removeprefix("amp_"): value for name, value in values.items()})


def preset_config(name: str, **explicit: Any) -> AMPConfig:
    """The validated `AMPConfig` of preset `name`, with `explicit` settings (AMPConfig's names: `epsilon=0.1`, ...)
    winning over the preset's, as explicit `amp_*` arguments do: for code that builds AMP outside the Trainer."""
    return resolve(name, {f"amp_{key}": value for key, value in explicit.items()})
