"""BatchNorm-style running statistics under AMP: one update per micro-batch, by the descent pass.

Every AMP pass runs the model in training mode, so BatchNorm (and InstanceNorm with `track_running_stats`) would
update its running statistics K + 1 times per micro-batch. The policy, `updated_by_the_descent`: the descent pass, on
the whole micro-batch at θ + Δ, makes the one update, as the one forward of plain training does; the ascent passes
leave no trace. Measured against the clean pass's update (the head at θ when `amp_ascent_fraction` < 1) on the
held-out frontier task: docs/arguments.md, `amp_ascent_fraction`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.nn.modules.batchnorm import _NormBase


@contextmanager
def updated_by_the_descent(model: torch.nn.Module) -> Iterator[Callable[[], None]]:
    """AMP's running-statistics policy: enter before the clean pass; call the yielded `before_descent` when the
    ascent passes are done (again before a retried descent): it puts every running-statistics buffer back, so the
    descent's forward makes the micro-batch's one update. A block that fails before the descent puts them back too."""
    saved = [
        (buffer, buffer.detach().clone())
        for module in model.modules()
        if isinstance(module, _NormBase) and module.track_running_stats
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
        if buffer is not None
    ]
    reached = False

    def before_descent() -> None:
        nonlocal reached
        reached = True
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)

    try:
        yield before_descent
    finally:
        if not reached:
            before_descent()
