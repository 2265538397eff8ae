"""AMP for TRL's `SFTTrainer` (optional dependency: `pip install "amp-hf[trl]"`).

from amp_hf.sft import AMPSFTConfig, AMPSFTTrainer       # was: from trl import SFTConfig, SFTTrainer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .trainer import AMPMixin
from .training_args import AMPArgumentsMixin

try:
    from trl import SFTConfig, SFTTrainer
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError('amp_hf.sft needs TRL: pip install "amp-hf[trl]"') from err


@dataclass
class AMPSFTConfig(AMPArgumentsMixin, SFTConfig):
    """`trl.SFTConfig` plus the AMP fields."""


class AMPSFTTrainer(AMPMixin, SFTTrainer):
    """`trl.SFTTrainer` with Adversarial Model Perturbation.

    SFTTrainer's `compute_loss` records entropy and token accuracy and counts training tokens on every call. An AMP
    step calls it K + 1 times per micro-batch; every ascent pass's records are undone, so what is kept is the descent
    pass's, on the whole micro-batch (the ascent may see only its head, `amp_ascent_fraction`): the token count is
    the plain SFTTrainer's, and the metrics describe the pass the gradient is taken from, like `loss`.
    """

    def _amp_ascent_loss(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        metrics = {key: list(values) for key, values in self._metrics["train"].items()}
        tokens = self._total_train_tokens
        try:
            return super()._amp_ascent_loss(model, inputs, num_items_in_batch)
        finally:
            self._metrics["train"].clear()
            self._metrics["train"].update(metrics)
            self._total_train_tokens = tokens
