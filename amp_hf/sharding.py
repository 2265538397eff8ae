"""Sharded parameters: what the AMP update needs from FSDP2's DTensors and DeepSpeed ZeRO-3's partitions.

Under FSDP2 a parameter is a DTensor whose local part is one shard (a block of rows, possibly uneven, possibly
empty); under ZeRO-3 it is a `torch.nn.Parameter` whose `ds_tensor` holds this process's flat partition (padded at
the end) while its `.data` is empty, or a gathered copy of the whole tensor while a module runs. Everything in the
update is elementwise except the norms, so AMP works on the local parts as they are and takes the norms of the
whole tensors: ‖t‖² is the sum over the processes of ‖local part‖² (`Layout.group`). An empty part adds 0.

One interface for both, used by `perturbation.py`:
  - `layout(params)`: the local parts the update reads and writes, the process group whose parts make up the whole
    tensors, and `written()`, to call after writing the parts (ZeRO-3 drops its gathered copies, so the next forward
    gathers the values just written);
  - `local_shards(tensors)`: the local part of sharded gradients (DTensors); others as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

try:  # public since torch 2.5; torch builds without distributed support have no DTensor (and no FSDP2)
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - depends on the torch build
    DTensor = Shard = None


@dataclass
class Layout:
    """Where the values of the perturbed parameters live on this process."""

    local: list[torch.Tensor]
    """What the update writes: the parameters themselves, FSDP2's local shards, or ZeRO-3's partitions (views)."""
    group: dist.ProcessGroup | None = None
    """The process group whose local parts make up the whole tensors (None: each tensor is whole here)."""
    written: Callable[[], None] = field(default=lambda: None, repr=False)
    """Called after the local parts were written (ZeRO-3: gathered copies are dropped, so they are gathered anew)."""


def is_sharded(t: torch.Tensor) -> bool:
    """Whether `t` is a DTensor (an FSDP2 parameter or gradient), whose local part is only a shard."""
    return DTensor is not None and isinstance(t, DTensor)


def is_partitioned(t: torch.Tensor) -> bool:
    """Whether `t` is a DeepSpeed ZeRO-3 parameter (its values live in `ds_tensor`, this process's partition)."""
    return hasattr(t, "ds_tensor") and hasattr(t, "ds_status")


def layout(params: Sequence[torch.Tensor]) -> Layout:
    """The local parts of `params` and the group they are sharded over; refuses mixed or unsupported layouts.

    Sharded and unsharded tensors together are refused (an unsharded tensor's gradient is not reduced across
    processes, so each process would perturb it differently), and so are layouts whose whole-tensor norms are not a
    plain sum over one group's parts (several meshes, HSDP's replicas, tensor parallelism, ZeRO++'s secondary
    partitions): projecting with the norms of pieces would be silently wrong.
    """
    params = list(params)
    partitioned = [p for p in params if is_partitioned(p)]
    if partitioned:
        if len(partitioned) != len(params):
            raise ValueError(
                "AMP found ZeRO-3 partitioned and unpartitioned parameters to perturb together; under DeepSpeed ZeRO "
                "stage 3 every perturbed parameter must be partitioned by the engine (put the others in amp_exclude)"
            )
        return _zero3_layout(partitioned)
    sharded = [p for p in params if is_sharded(p)]
    if not sharded:
        return Layout(params)
    if len(sharded) != len(params):
        raise ValueError(
            "AMP found sharded (DTensor) and unsharded parameters to perturb together; under FSDP2 every perturbed "
            "parameter must be sharded by fully_shard (put the unsharded ones in amp_exclude, or shard the root module)"
        )
    mesh = sharded[0].device_mesh
    if mesh.ndim != 1 or any(p.device_mesh != mesh or not isinstance(p.placements[0], Shard) for p in sharded):
        raise ValueError(
            "AMP supports parameters sharded by FSDP2 over one 1-D device mesh (plain fully_shard); HSDP, tensor "
            "parallelism and other multi-dimensional layouts are not supported. Use FSDP2 without them, or DDP."
        )
    return Layout(local_shards(sharded), mesh.get_group())


def local_shards(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The local shard of each DTensor, as a view of its storage (writing it writes the parameter); others as is."""
    with torch.no_grad():
        return [t.to_local() if is_sharded(t) else t for t in tensors]


# ------------------------------------------------------------------------------------------------ ZeRO-3
# A ZeRO-3 parameter of n elements is flattened and cut into equal partitions of `ds_tensor.ds_numel` elements, one
# per process of `ds_process_group` in rank order, the last ones padded past n. Process r's valid part is elements
# [r·size, min((r + 1)·size, n)) of the flat tensor, possibly none. The forward runs on gathered copies in `.data`,
# made from the partitions when a module needs them; persistent (small) parameters keep theirs between passes.


def zero3_valid_range(p: torch.Tensor) -> tuple[int, int]:
    """(start, length) of this process's valid part of `p`'s flat elements."""
    size = int(p.ds_tensor.ds_numel)
    start = dist.get_rank(group=p.ds_process_group) * size
    return start, max(0, min(size, int(p.ds_numel) - start))


def _zero3_layout(params: list[torch.Tensor]) -> Layout:
    group = params[0].ds_process_group
    if any(getattr(p, "ds_secondary_tensor", None) is not None for p in params):
        raise ValueError(
            "AMP does not support ZeRO++ hierarchical partitioning (zero_hpz_partition_size > 1): the parameters "
            "have a second partition that AMP would have to perturb too. Use plain ZeRO stage 3."
        )
    if any(p.ds_process_group != group for p in params):
        raise ValueError("AMP supports ZeRO-3 parameters partitioned over one process group only (not MiCS).")
    local = [p.ds_tensor.narrow(0, 0, zero3_valid_range(p)[1]) for p in params]
    return Layout(local, group, written=lambda: _drop_gathered_copies(params))


def _drop_gathered_copies(params: list[torch.Tensor]) -> None:
    """Frees the gathered copies of `params` (the engine's own `partition`, which copies nothing back): the next
    module that needs them gathers them from the partitions just written. Persistent parameters included; the engine
    gathers those again by itself (in the next forward, or after its optimizer step)."""
    gathered = [p for p in params if p.ds_status.name == "AVAILABLE"]
    if any(p.ds_status.name == "INFLIGHT" for p in params):
        raise RuntimeError(
            "AMP under ZeRO-3: a parameter was being gathered while AMP wrote its partition (a prefetch left in "
            "flight between passes), so its gathered copy would be stale. Disable prefetching (stage3_prefetch_"
            "bucket_size: 0) and report this, with your DeepSpeed config."
        )
    if gathered:
        gathered[0].partition(param_list=gathered)


def fsdp_plugin_problem(accelerator: Any) -> str | None:
    """Why accelerate's FSDP plugin is not what AMP supports (FSDP2 without CPU offload), or None when it is: FSDP1's
    flat parameters hide the tensors, and offloaded shards and gradients are not verified."""
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    version = getattr(plugin, "fsdp_version", 1)  # the Trainer reads a missing version as 1 too
    if version != 2 or DTensor is None:
        return f"FSDP version {version} (FSDP1's flat parameters hide the tensors; FSDP2, `fully_shard`, is supported)"
    if type(getattr(plugin, "cpu_offload", None)).__name__ == "CPUOffloadPolicy":
        return "FSDP2 with CPU offload (`cpu_offload` / `fsdp_offload_params`: offloaded shards are not verified)"
    return None
