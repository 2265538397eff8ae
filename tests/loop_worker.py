"""Run by `test_loop.py` under `torchrun --nproc_per_node 2` (CPU, gloo). Exits non-zero on any failure.

Checks `amp_hf.AMP` in a custom Accelerate loop (`accelerate_loop.py`), in one launch (a launch costs ~10 s):
  1. two processes with batch b each give the weights of one process accumulating two micro-batches of b, each with
     its own perturbation (the plain-PyTorch reference): tensor ball, K = 1; every rank ends bit-identical;
  2. the same with `accelerator.accumulate` over 2 micro-batches per process (one process accumulating 4), the global
     ball, K = 2, the optimizer stepping inside the `amp.perturbed` block (the no_trainer scripts' shape);
  3. the ascent on half of each process's micro-batch (`amp_ascent_fraction`);
  4. per optimizer step, AMP makes exactly as many gradient all-reduces and passes through the DDP wrapper as the
     same loop without AMP: the ascent passes communicate nothing;
  5. FSDP2 (`fully_shard`, three FSDP units, uneven shards), in a plain PyTorch loop: the weights of one process
     running AMP on both ranks' micro-batches together (the ascent uses the gradient averaged over the processes, as
     AMPTrainer's under FSDP2): tensor ball K = 1 with the step inside the block, global ball K = 2 with 2 micro-batches
     accumulated;
  6. examples/text_classification_no_trainer.py on MiniLM-L6 and Rotten Tomatoes trains with AMP on both ranks;
  7. amp_direction='momentum' (SGD with momentum, found by the step hooks): the replicated first moment gives every
     rank the same Δ, the weights of the accumulating reference, and the communication of the loop without AMP.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from amp_hf import AMP, close_process_group

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
from accelerate_loop import NO_TRAINER_SMOKE, train_with_amp  # noqa: E402
from edge_models import RootScaledClassifier  # noqa: E402
from helpers import (  # noqa: E402
    DictDataset,
    TinyClassifier,
    assert_close_to,
    assert_ranks_identical,
    reference_amp,
    reference_momentum_amp,
)

STEPS, BATCH = 3, 4
counts = {"allreduce": 0, "ddp_forward": 0}
_ddp_forward = DistributedDataParallel.forward


def counting_forward(self, *args, **kwargs):
    counts["ddp_forward"] += 1
    return _ddp_forward(self, *args, **kwargs)


DistributedDataParallel.forward = counting_forward


def count_allreduces(model: torch.nn.Module) -> None:
    assert isinstance(model, DistributedDataParallel), type(model)

    def hook(process_group, bucket):
        counts["allreduce"] += 1
        return allreduce_hook(process_group, bucket)

    model.register_comm_hook(None, hook)


def accelerator(**kwargs) -> Accelerator:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Accelerator(cpu=True, **kwargs)


def assert_close_on_every_rank(model, expected, what: str) -> None:
    assert_close_to(model, expected, what)
    assert_ranks_identical(model)
    print(f"rank {dist.get_rank()}: {what} == reference, ranks identical", flush=True)


def check_fsdp2(data: DictDataset, norm: str, inner_steps: int, accumulate: int, make_model) -> None:
    """AMP in a plain loop over an FSDP2 model: rank r trains on half r of each global micro-batch of 2·BATCH rows.

    `RootScaledClassifier` holds a parameter in the root FSDP module, which keeps its gathered weights after its
    forward: its shard must still get the ascent's gradient (listed before the forward) and its `.grad` only the
    descent's."""
    model = make_model()
    fully_shard(model.fc1)
    fully_shard(model.fc2)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    amp = AMP(model, amp_epsilon=0.05, amp_norm=norm, amp_inner_steps=inner_steps)
    rank, micro = dist.get_rank(), 0
    for _ in range(STEPS):
        for j in range(accumulate):
            rows = slice(micro * 2 * BATCH + rank * BATCH, micro * 2 * BATCH + (rank + 1) * BATCH)
            batch = {"x": data.x[rows], "labels": data.y[rows]}
            micro += 1
            with amp.perturbed(batch) as result:
                (model(**batch)["loss"] / accumulate).backward()
                if j == accumulate - 1:
                    optimizer.step()
                    optimizer.zero_grad()
            assert float(result.delta_norm) > 0
    expected = reference_amp(
        make_model(), data, steps=STEPS, batch_size=2 * BATCH, grad_accum=accumulate,
        epsilon=0.05, norm=norm, inner_steps=inner_steps,
    )  # fmt: skip
    what = f"FSDP2 {type(expected).__name__}, {norm} ball, K = {inner_steps}, GA {accumulate}"
    for (name, p), (_, e) in zip(model.named_parameters(), expected.named_parameters()):
        assert isinstance(p, DTensor), name
        torch.testing.assert_close(p.full_tensor(), e, atol=2e-6, rtol=1e-5, msg=lambda m, n=name: f"{what}, {n}: {m}")
    print(f"rank {rank}: {what} == reference", flush=True)


def main() -> None:
    data = DictDataset(n=64)

    trained, amp, _ = train_with_amp(TinyClassifier(), data, accelerator(), steps=STEPS, amp_epsilon=0.05)
    rank = dist.get_rank()
    assert dist.get_world_size() == 2 and isinstance(trained, DistributedDataParallel) and amp.optimizer_steps == STEPS
    expected = reference_amp(TinyClassifier(), data, steps=STEPS, batch_size=BATCH, grad_accum=2, epsilon=0.05)
    assert_close_on_every_rank(trained, expected, "2 processes, tensor ball, K = 1")

    settings = dict(epsilon=0.05, norm="global", inner_steps=2)
    trained, _, _ = train_with_amp(
        TinyClassifier(), data, accelerator(gradient_accumulation_steps=2), steps=STEPS, step_inside=True,
        **{f"amp_{k}": v for k, v in settings.items()},
    )  # fmt: skip
    expected = reference_amp(TinyClassifier(), data, steps=STEPS, batch_size=BATCH, grad_accum=4, **settings)
    assert_close_on_every_rank(trained, expected, "2 processes x GA 2, global ball, K = 2, step inside the block")

    trained, _, _ = train_with_amp(
        TinyClassifier(), data, accelerator(), steps=STEPS, amp_epsilon=0.05, amp_ascent_fraction=0.5
    )
    expected = reference_amp(
        TinyClassifier(), data, steps=STEPS, batch_size=BATCH, grad_accum=2, epsilon=0.05, ascent_fraction=0.5
    )
    assert_close_on_every_rank(trained, expected, "2 processes, ascent on half of each micro-batch")

    seen = {}
    for name, inner_steps in (("AMP", 1), ("ERM", 0)):
        counts.update(allreduce=0, ddp_forward=0)
        train_with_amp(
            TinyClassifier(), data, accelerator(gradient_accumulation_steps=2), steps=STEPS,
            amp_inner_steps=inner_steps, on_prepared=count_allreduces,
        )  # fmt: skip
        seen[name] = dict(counts)
    assert seen["AMP"] == seen["ERM"] == {"allreduce": STEPS, "ddp_forward": 2 * STEPS}, seen
    print(f"rank {rank}: communication AMP {seen['AMP']} == ERM {seen['ERM']}", flush=True)

    uneven = functools.partial(TinyClassifier, n_in=6, n_hidden=5, n_out=3)  # 5 and 3 rows split unevenly over 2
    for norm, inner_steps, accumulate, make_model in (
        ("tensor", 1, 1, uneven),
        ("global", 2, 2, RootScaledClassifier),
    ):
        check_fsdp2(data, norm, inner_steps, accumulate, make_model)

    counts.update(allreduce=0, ddp_forward=0)
    trained, _, _ = train_with_amp(
        TinyClassifier(), data, accelerator(), steps=STEPS, momentum=0.9, on_prepared=count_allreduces,
        amp_direction="momentum", amp_norm="global", amp_epsilon=0.3,
    )  # fmt: skip
    expected = reference_momentum_amp(TinyClassifier(), data, steps=STEPS, batch_size=BATCH, grad_accum=2, epsilon=0.3)
    assert_close_to(trained, expected, "momentum direction, 2 processes")
    assert_ranks_identical(trained)
    assert counts == {"allreduce": STEPS, "ddp_forward": STEPS}, counts
    print(f"rank {rank}: momentum direction matches the accumulating reference, communication {counts}", flush=True)

    import text_classification_no_trainer as example

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    out = tempfile.mkdtemp()
    results = example.main([*NO_TRAINER_SMOKE, "--output_dir", out])
    assert results["amp_steps"] == 2 and results["amp_delta_norm"] > 0, results
    print(f"rank {rank}: no_trainer example trained with AMP: {results}", flush=True)
    print(f"rank {rank}: ALL OK", flush=True)
    close_process_group()  # without it, torch 2.13's gloo threads abort the process at exit (5 of 20 launches)


if __name__ == "__main__":
    main()
