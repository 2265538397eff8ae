"""BatchNorm-style running statistics under AMP: one update per micro-batch, by the clean pass at θ.

Every AMP pass runs in training mode, so BatchNorm (and InstanceNorm with `track_running_stats`) would update K + 1
times per micro-batch. The clean pass makes the one update, at θ, the weights evaluation runs at (on the head of the
micro-batch when `amp_ascent_fraction` < 1). The descent's update (the whole micro-batch, at θ + Δ) was measured
against it and was worse on the demo's task: docs/cheap-amp.md, 'BatchNorm under a fraction'.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.nn.modules.batchnorm import _NormBase


@contextmanager
def kept_from_the_clean_pass(model: torch.nn.Module) -> Iterator[Callable[[], None]]:
    """AMP's running-statistics policy: enter before the clean pass and call the yielded `clean_pass_done` right after
    it; on exit every running-statistics buffer is put back to its value then (to its value at entry when the clean
    pass never finished, e.g. it raised), so the micro-batch's one update is the clean pass's."""
    buffers = [
        buffer
        for module in model.modules()
        if isinstance(module, _NormBase) and module.track_running_stats
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buffer is not None
    ]
    saved = [buffer.detach().clone() for buffer in buffers]

    def clean_pass_done() -> None:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                value.copy_(buffer)

    try:
        yield clean_pass_done
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)
