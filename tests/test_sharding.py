"""`sharding.py` without processes: ZeRO-3's partition arithmetic, the refusals, and the gathered-copy drop, on
parameters carrying the attributes DeepSpeed sets (the two-process runs are in `deepspeed_worker.py` and
`fsdp_worker.py`)."""

from __future__ import annotations

import enum

import pytest
import torch

from amp_hf import sharding


class Status(enum.Enum):  # DeepSpeed's ZeroParamStatus, by name
    AVAILABLE = 1
    NOT_AVAILABLE = 2
    INFLIGHT = 3


def zero3_param(numel: int, processes: int, rank: int, status: str = "NOT_AVAILABLE") -> torch.nn.Parameter:
    """A parameter as ZeRO-3 leaves it on `rank`: empty `.data`, a padded flat partition in `ds_tensor`."""
    size = -(-numel // processes)
    p = torch.nn.Parameter(torch.empty(0))
    p.ds_numel, p.ds_process_group, p.ds_status = numel, f"group of {processes}", Status[status]
    p.ds_tensor = torch.arange(rank * size, (rank + 1) * size, dtype=torch.float32)
    p.ds_tensor.ds_numel = size
    p.partitioned = []
    p.partition = lambda param_list: p.partitioned.append(list(param_list))  # the engine's own method
    return p


@pytest.mark.parametrize(
    ("numel", "processes", "expected"),
    [
        (7, 2, [(0, 4), (4, 3)]),  # the last partition is padded by one element
        (7, 3, [(0, 3), (3, 3), (6, 1)]),
        (2, 4, [(0, 1), (1, 1), (2, 0), (3, 0)]),  # more processes than elements: empty valid parts
    ],
)
def test_valid_ranges_cover_the_tensor_once(monkeypatch, numel, processes, expected):
    ranges = []
    for rank in range(processes):
        monkeypatch.setattr(sharding.dist, "get_rank", lambda group=None, r=rank: r)
        ranges.append(sharding.zero3_valid_range(zero3_param(numel, processes, rank)))
    assert ranges == expected
    assert sum(length for _, length in ranges) == numel


def test_zero3_layout_gives_views_of_the_partitions_and_drops_gathered_copies(monkeypatch):
    monkeypatch.setattr(sharding.dist, "get_rank", lambda group=None: 1)
    gathered, released = zero3_param(7, 2, 1, "AVAILABLE"), zero3_param(5, 2, 1)
    parts = sharding.layout([gathered, released])
    assert parts.group == "group of 2"
    assert [t.tolist() for t in parts.local] == [[4.0, 5.0, 6.0], [3.0, 4.0]]  # valid elements only
    parts.local[0].add_(10)  # a view: writing it writes the partition
    assert gathered.ds_tensor.tolist() == [14.0, 15.0, 16.0, 7.0]
    parts.written()
    assert gathered.partitioned == [[gathered]] and released.partitioned == []  # only gathered copies are dropped


def test_zero3_layout_refuses_what_it_cannot_perturb_correctly(monkeypatch):
    monkeypatch.setattr(sharding.dist, "get_rank", lambda group=None: 0)
    with pytest.raises(ValueError, match="partitioned and unpartitioned"):
        sharding.layout([zero3_param(4, 2, 0), torch.nn.Parameter(torch.ones(3))])
    secondary = zero3_param(4, 2, 0)
    secondary.ds_secondary_tensor = torch.zeros(1)
    with pytest.raises(ValueError, match="zero_hpz_partition_size"):
        sharding.layout([secondary])
    other_group = zero3_param(4, 2, 0)
    other_group.ds_process_group = "another group"
    with pytest.raises(ValueError, match="one process group"):
        sharding.layout([zero3_param(4, 2, 0), other_group])
    in_flight = sharding.layout([zero3_param(4, 2, 0, "INFLIGHT")])
    with pytest.raises(RuntimeError, match="prefetch"):
        in_flight.written()


def test_plain_parameters_are_their_own_local_parts():
    params = [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.zeros(3))]
    parts = sharding.layout(params)
    assert parts.group is None and all(a is b for a, b in zip(parts.local, params))
    parts.written()  # nothing to do
