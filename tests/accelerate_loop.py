"""A custom Accelerate training loop with `amp_hf.AMP`, as a user writes it, for `test_loop.py` and `loop_worker.py`.

SGD at a constant rate on batches taken in order, so that `helpers.reference_amp` can replay the same updates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from amp_hf import AMP

NO_TRAINER_SMOKE = ["--max_train_samples", "32", "--max_eval_samples", "16", "--per_device_train_batch_size", "8"]
NO_TRAINER_SMOKE += ["--max_train_steps", "2", "--amp_epsilon", "0.05", "--cpu"]
"""A two-step run of examples/text_classification_no_trainer.py on the real MiniLM-L6 and Rotten Tomatoes."""


def train_with_amp(
    model: torch.nn.Module,
    data: torch.utils.data.Dataset,
    accelerator: Accelerator,
    *,
    steps: int,
    batch_size: int = 4,
    lr: float = 0.1,
    autocast_around: bool = False,
    step_inside: bool = False,
    on_prepared: Callable[[torch.nn.Module], None] | None = None,
    momentum: float = 0.0,
    pass_optimizer: bool = False,
    **amp_settings: Any,
) -> tuple[torch.nn.Module, AMP, list]:
    """Trains `steps` optimizer steps with AMP; returns the prepared model, the AMP object and every step's result.

    `autocast_around`: the whole step in one `accelerator.autocast()` region, as some loops write it.
    `step_inside`: the optimizer steps inside the `amp.perturbed` block, as the Hugging Face no_trainer scripts do.
    `on_prepared`: called with the model `accelerator.prepare` returned (to count its communication).
    `momentum`: SGD's; `pass_optimizer`: AMP is given the prepared optimizer (else it finds it by its step hooks).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if on_prepared is not None:
        on_prepared(model)
    amp = AMP(model, accelerator=accelerator, optimizer=optimizer if pass_optimizer else None, **amp_settings)
    results = []
    for batch in loader:
        with (
            accelerator.accumulate(model),
            accelerator.autocast() if autocast_around else contextlib.nullcontext(),
            amp.perturbed(batch) as result,
        ):
            accelerator.backward(model(**batch)["loss"])
            if step_inside:
                optimizer.step()
                optimizer.zero_grad()
        if not step_inside:
            optimizer.step()
            optimizer.zero_grad()
        results.append(result)
        if amp.optimizer_steps == steps:
            break
    return model, amp, results
