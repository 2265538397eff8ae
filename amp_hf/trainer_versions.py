"""Where the Hugging Face Trainer behaves differently in the supported transformers releases (4.57 and 5.x).

AMP's glue mirrors two things the Trainer does around `compute_loss`; each is answered here the way the installed
release does it, so `trainer.py` has no version test of its own. The facts were read from the sources of transformers
4.57.6 and 5.24.0 (the two releases CI runs: `make test` and `make test-457`):

- the item count (`Trainer._get_num_items_in_batch`): 5.x counts `shift_labels` when the batch has them, and
  `labels[..., 1:]` for a loss that shifts labels (a causal LM); 4.57 counts `labels` as they are;
- the process factor of a count-normalised loss (`Trainer.compute_loss` with `average_tokens_across_devices`): 5.x
  multiplies by the process count over the tensor-parallel size, 4.57 by the process count;
- the logged `loss`: 4.57 rounds it to 4 decimals, 5.x does not; `amp_clean_loss` is rounded the same way.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from packaging.version import Version

TRANSFORMERS_VERSION = Version(transformers.__version__)
TRAINER_4X = TRANSFORMERS_VERSION.major < 5
"""transformers 4.x (4.57 is the oldest release supported): the Trainer of the last 4.x line."""


def as_logged(loss: float) -> float:
    """A loss value with the precision the Trainer logs `loss` with (4.x rounds it to 4 decimals)."""
    return round(loss, 4) if TRAINER_4X else loss


def counted_labels(trainer: Any, inputs: dict[str, Any]) -> Any:
    """The labels whose entries other than -100 the Trainer counts as the micro-batch's items (None: no labels)."""
    if TRAINER_4X:
        return inputs.get("labels")
    if "shift_labels" in inputs:
        return inputs["shift_labels"]
    if "labels" in inputs:
        labels = inputs["labels"]
        return labels[..., 1:] if getattr(trainer, "_loss_shifts_labels", False) and torch.is_tensor(labels) else labels
    return None


def process_factor(trainer: Any) -> int:
    """What `Trainer.compute_loss` multiplies a count-normalised loss by when it averages tokens across devices
    (so that DDP's gradient averaging leaves a sum over the window's items); 1 when it does not."""
    args = trainer.args
    if not args.average_tokens_across_devices:
        return 1
    if not (trainer.model_accepts_loss_kwargs or trainer.compute_loss_func is not None):
        return 1
    if args.n_gpu > 1:
        return args.n_gpu
    if TRAINER_4X:
        return max(1, trainer.accelerator.num_processes)
    tp_size = trainer.get_tp_size() if hasattr(trainer, "get_tp_size") else 1
    return max(1, trainer.accelerator.num_processes // tp_size)
