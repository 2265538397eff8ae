"""The head of a micro-batch, for `amp_ascent_fraction`: the ascent passes use its first ⌈f·B⌉ examples.

Bahri et al. (ACL 2022), after Brock et al. (2021), take SAM's ascent gradient on a quarter of the batch for most of
its gain at a quarter of its extra cost. The sampler has already shuffled the micro-batch, so its first examples are
a random subset. Every tensor whose first dimension is the batch size is cut; anything else (scalars, tensors of
another length, non-tensors) is passed on as it is, so model inputs without a batch dimension keep working.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch


def batch_size(inputs: Any) -> int | None:
    """The micro-batch's size: the first dimension of `labels` if there is one, else of the first batched tensor."""
    if isinstance(inputs, Mapping) and torch.is_tensor(inputs.get("labels")) and inputs["labels"].dim() > 0:
        return inputs["labels"].shape[0]
    for value in (
        inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (list, tuple)) else ()
    ):
        found = value.shape[0] if torch.is_tensor(value) and value.dim() > 0 else batch_size(value)
        if found is not None:
            return found
    return None


def head_of_batch(inputs: Any, fraction: float) -> Any:
    """`inputs` cut to the first ⌈fraction·B⌉ examples (at least one); `inputs` itself when nothing would be cut."""
    size = batch_size(inputs)
    if fraction >= 1 or size is None:
        return inputs
    keep = max(1, math.ceil(fraction * size))
    return inputs if keep >= size else _head(inputs, size, keep)


def _head(value: Any, size: int, keep: int) -> Any:
    if torch.is_tensor(value):
        return value[:keep] if value.dim() > 0 and value.shape[0] == size else value
    if isinstance(value, Mapping):  # dict, BatchEncoding, ...: the same type, as the Trainer's _prepare_inputs does
        return type(value)({key: _head(item, size, keep) for key, item in value.items()})
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_head(item, size, keep) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_head(item, size, keep) for item in value)
    return value
