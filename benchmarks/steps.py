"""An optimizer step taken by hand, as the Trainer's loop takes it, for timing and memory measurements (the cost study
and the device checks): a trainer ready to step, the step, and the sizes a measurement is expressed in."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from amp_hf import AMPTrainingArguments


def make_trainer(cls, model, use_cpu: bool = True, **amp):
    """A trainer ready to step by hand, as its training loop would: optimizer, scheduler, no accumulation."""
    args = AMPTrainingArguments(
        output_dir="outputs/cost", use_cpu=use_cpu, report_to="none", learning_rate=1e-4, max_steps=10**6,
        disable_tqdm=True, amp_epsilon=0.01, **amp,
    )  # fmt: skip
    trainer = cls(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def optimizer_step(trainer) -> None:
    """What the Trainer's loop does after the micro-batches: clip, step, schedule, zero the gradients."""
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.model.zero_grad(set_to_none=True)


def train_step(trainer, model, batch, step: int) -> None:
    """One optimizer step as the Trainer's loop takes it, at `global_step` = `step` (which AMP's interval reads)."""
    trainer.state.global_step = step
    trainer.training_step(model, dict(batch))
    optimizer_step(trainer)


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def tensor_peak_bytes(trainer, model, batch, steps: int = 2) -> int:
    """The peak of live tensor bytes on the CPU over `steps` steps, from torch.profiler's memory timeline.

    RSS also counts what the allocator keeps or rounds up; this counts tensors only, so AMP's extra peak over ERM
    reads as what the algorithm holds (one copy of θ) plus anything it holds by mistake.
    """
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        for step in range(steps):
            train_step(trainer, model, batch, step)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of a CUDA-only tool; still works on CPU
        prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
        _, sizes = json.loads(Path(f"{tmp}/timeline.json").read_text())
    return max(sum(by_category) for by_category in sizes)
