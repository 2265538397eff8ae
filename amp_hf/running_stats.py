"""Keep BatchNorm-style running statistics to one update per micro-batch.

Every AMP pass runs the model in training mode, so BatchNorm (and InstanceNorm with `track_running_stats`) would
update its running mean and variance K + 1 times per micro-batch, from perturbed weights too. The trainer snapshots
these buffers right after the clean pass and puts them back after the descent pass: the clean pass at θ is the one
update that counts, as in plain training.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _NormBase


class RunningStatsSnapshot:
    """A copy of every running-statistics buffer of `model`, restorable in place."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = [
            (buffer, buffer.detach().clone())
            for module in model.modules()
            if isinstance(module, _NormBase) and module.track_running_stats
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
            if buffer is not None
        ]

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self._saved:
                buffer.copy_(saved)
