"""Which parameters AMP perturbs: trainable, matched by `amp_include` (when given), not matched by `amp_exclude`.

Names are the model's own (`model.named_parameters()` of the unwrapped model), so patterns read the same however a
run is launched. The name test is fixed for a model, so it is done once; `requires_grad` is not (gradual unfreezing
recipes flip it during training), so it is read again on every step. A tied tensor is one tensor with several
names: `amp_exclude` matching any of them excludes it, `amp_include` matching any includes it, and it is perturbed
once.

    from amp_hf import perturbed_parameter_names
    perturbed_parameter_names(model, AMPTrainingArguments(..., amp_include=["norm"]))   # what AMP would perturb
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from .config import PATTERN_FIELDS, AMPConfig


def _config_of(settings: AMPConfig | Any) -> AMPConfig:
    return settings if isinstance(settings, AMPConfig) else AMPConfig.from_args(settings)


def aliases(model: torch.nn.Module) -> list[tuple[list[str], torch.nn.Parameter]]:
    """Every parameter tensor once, with all the names it is reachable by (GPT-2's `lm_head.weight` is
    `transformer.wte.weight`): `named_parameters()` alone lists a tied tensor under its first name only."""
    found: dict[int, tuple[list[str], torch.nn.Parameter]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        found.setdefault(id(p), ([], p))[0].append(name)
    return list(found.values())


def candidates(model: torch.nn.Module, config: AMPConfig) -> list[tuple[str, torch.nn.Parameter]]:
    """(first name, parameter) of every tensor AMP selects by its names (any alias), trainable now or not; once."""
    return [(names[0], p) for names, p in aliases(model) if config.selects(*names)]


def perturbed_parameter_names(model: torch.nn.Module, settings: AMPConfig | Any) -> list[str]:
    """The names of the parameters AMP perturbs in `model` with these settings (an `AMPConfig` or training args).

    `model` is the bare model (not a DDP or compile wrapper): the names are the ones `amp_include` / `amp_exclude`
    patterns are matched against.
    """
    config = _config_of(settings)
    return [name for name, p in candidates(model, config) if p.requires_grad]


@dataclass(frozen=True)
class SelectionReport:
    """What AMP perturbs in a model, for the log line at the start of training."""

    tensors: int
    parameters: int
    trainable_tensors: int
    trainable_parameters: int
    unmatched: dict[str, tuple[str, ...]]
    """Per pattern field ('include', 'exclude'): the patterns that match no parameter name of the model."""

    def summary(self) -> str:
        share = self.parameters / self.trainable_parameters if self.trainable_parameters else 0.0
        return (
            f"AMP perturbs {self.tensors} of {self.trainable_tensors} trainable tensors "
            f"({self.parameters:,} of {self.trainable_parameters:,} parameters, {share:.1%})"
        )

    def problems(self) -> list[str]:
        """Warnings: patterns that match nothing, and a selection that leaves nothing to perturb."""
        found = [
            f"amp_{field} pattern(s) {list(patterns)} match no parameter name of the model (patterns are separate "
            f"arguments, e.g. --amp_{field} bias LayerNorm, not comma-separated; list the names with "
            "amp_hf.perturbed_parameter_names or model.named_parameters())"
            for field, patterns in self.unmatched.items()
            if patterns
        ]
        if self.tensors == 0:
            found.append(
                "AMP perturbs no parameter (every trainable parameter is filtered out by amp_include / amp_exclude, "
                "or none is trainable): training is plain ERM and no amp_* metric is meaningful"
            )
        return found


def report(model: torch.nn.Module, settings: AMPConfig | Any) -> SelectionReport:
    config = _config_of(settings)
    names = [name for tensor_names, _ in aliases(model) for name in tensor_names]
    trainable_all = [p for p in model.parameters() if p.requires_grad]
    perturbed = [p for _, p in candidates(model, config) if p.requires_grad]
    unmatched = {
        field: tuple(pattern for pattern in getattr(config, field) if not any(re.search(pattern, n) for n in names))
        for field in PATTERN_FIELDS
    }
    return SelectionReport(
        tensors=len(perturbed),
        parameters=sum(_numel(p) for p in perturbed),
        trainable_tensors=len(trainable_all),
        trainable_parameters=sum(_numel(p) for p in trainable_all),
        unmatched=unmatched,
    )


def _numel(p: torch.nn.Parameter) -> int:
    """Elements of the whole tensor (a ZeRO-3 parameter's `.data` is empty while it is partitioned)."""
    return int(getattr(p, "ds_numel", p.numel()))
