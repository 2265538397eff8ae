"""BatchNorm-style running statistics under AMP: one update per micro-batch, by the clean pass at θ.

Every AMP pass runs the model in training mode, so BatchNorm (and InstanceNorm with `track_running_stats`) would
update its running statistics K + 1 times per micro-batch. The policy, `kept_from_the_clean_pass`: the clean pass
makes the one update, at θ, the weights evaluation runs at; the later ascent passes and the descent at θ + Δ leave no
trace. With `amp_ascent_fraction` < 1 the clean pass sees the head of the micro-batch only, so its statistics come
from fewer examples. The alternative, the descent's update (the whole micro-batch, but at θ + Δ, whose activations
are not θ's), was measured against it: no difference on held-out Fashion-MNIST 5k, and worse on the demo's MNIST 1k
on every seed (docs/cheap-amp.md, 'BatchNorm under a fraction').
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
    with torch.no_grad():
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
