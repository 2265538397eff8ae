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
    step calls it K + 1 times per micro-batch; what is kept is what the clean pass at θ recorded, once, so these
    metrics describe the model being trained, like `loss`, and equal the plain SFTTrainer's at the same weights.
    """

    _amp_clean_metrics: tuple[dict[str, list], int] | None = None

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        self._amp_clean_metrics = None
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._amp_clean_metrics is not None:  # an AMP step ran: keep the clean pass's records only
            saved_metrics, saved_tokens = self._amp_clean_metrics
            self._metrics["train"].clear()
            self._metrics["train"].update(saved_metrics)
            self._total_train_tokens = saved_tokens
            self._amp_clean_metrics = None
        return loss

    def _amp_ascent_loss(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        loss = super()._amp_ascent_loss(model, inputs, num_items_in_batch)
        if self._amp_clean_metrics is None:  # the first ascent pass is the clean one, at θ
            metrics = {key: list(values) for key, values in self._metrics["train"].items()}
            self._amp_clean_metrics = (metrics, self._total_train_tokens)
        return loss
