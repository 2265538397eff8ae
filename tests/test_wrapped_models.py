"""`torch.compile` around or inside DDP, in `amp_hf.AMP` and AMPTrainer: the patterns see the model's own names.

`accelerator.prepare` with a dynamo backend builds `torch.compile(DDP(model))`, whose parameter names carry both
wrappers' prefixes (`_orig_mod.module.`). One process, a gloo group of size 1: DDP is real, nothing is launched.
"""

from __future__ import annotations

import logging
from unittest.mock import patch

import pytest
import torch
import torch.distributed as dist
from helpers import (
    DictDataset,
    MeanLossWithKwargs,
    SequentialAMPTrainer,
    SequentialTrainer,
    TinyClassifier,
    assert_params_close,
    free_port,
    reference_amp,
    tiny_args,
)
from torch.nn.parallel import DistributedDataParallel

from amp_hf import AMP, AMPTrainer

WRAPPINGS = {
    "compile(DDP(model))": lambda model: torch.compile(DistributedDataParallel(model), backend="eager"),
    "DDP(compile(model))": lambda model: DistributedDataParallel(torch.compile(model, backend="eager")),
}
FC1 = r"^fc1\."  # anchored: matches the model's own names only, not `module.fc1.` or `_orig_mod.fc1.`


@pytest.fixture
def process_group(monkeypatch):
    """A gloo process group of one process, destroyed afterwards, so that DDP can be built in this process."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
def test_loop_selects_by_the_models_own_names_and_matches_the_reference(process_group, caplog, wrapping):
    model = TinyClassifier()
    wrapped = WRAPPINGS[wrapping](model)
    with caplog.at_level(logging.WARNING):
        amp = AMP(wrapped, amp_epsilon=0.05, amp_include=[FC1])
    assert "match no parameter" not in caplog.text
    assert [name for name, _ in amp.named_parameters()] == ["fc1.weight", "fc1.bias"]
    assert amp.selection.tensors == 2
    data = DictDataset(n=8)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    for i in range(2):
        batch = {"x": data.x[4 * i : 4 * i + 4], "labels": data.y[4 * i : 4 * i + 4]}
        with amp.perturbed(batch) as result:
            wrapped(**batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        assert float(result.delta_norm) > 0
    expected = reference_amp(
        TinyClassifier(), data, steps=2, batch_size=4, epsilon=0.05, perturb=lambda name: name.startswith("fc1.")
    )
    assert_params_close(model, expected)


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
def test_trainer_names_are_the_models_own_through_compile_and_ddp(process_group, tmp_path, wrapping):
    model = TinyClassifier()
    trainer = AMPTrainer(model=model, args=tiny_args(tmp_path, amp_include=[FC1]), train_dataset=DictDataset())
    assert trainer.amp_parameter_names(WRAPPINGS[wrapping](model)) == ["fc1.weight", "fc1.bias"]


def test_trainer_ascent_runs_inside_the_ddp_wrapper_of_a_compiled_model(process_group, tmp_path):
    """The ascent passes must run on the module inside DDP (its forward would arm a gradient all-reduce that
    `torch.autograd.grad` never completes): one DDP forward per micro-batch, the descent's, as in the plain Trainer,
    and the reference's weights. The Trainer is handed `compile(DDP(model))` (a model whose forward takes loss kwargs:
    the Trainer reads the wrapper's `**kwargs` signature as accepting them)."""
    forwards = []
    counted = DistributedDataParallel.forward

    def counting(self, *args, **kwargs):
        forwards.append(1)
        return counted(self, *args, **kwargs)

    data = DictDataset(n=8)
    per_run, models = {}, {}
    for name, trainer_class in (("ERM", SequentialTrainer), ("AMP", SequentialAMPTrainer)):
        models[name] = MeanLossWithKwargs()
        args = tiny_args(tmp_path / name, max_steps=2, amp_epsilon=0.05, remove_unused_columns=False)
        trainer = trainer_class(model=WRAPPINGS["compile(DDP(model))"](models[name]), args=args, train_dataset=data)
        forwards.clear()
        with patch.object(DistributedDataParallel, "forward", counting):
            trainer.train()
        per_run[name] = len(forwards)
    assert per_run == {"ERM": 2, "AMP": 2}  # two steps, one DDP forward each
    assert_params_close(models["AMP"], reference_amp(MeanLossWithKwargs(), data, steps=2, batch_size=4, epsilon=0.05))


def test_loop_accepts_a_compiled_fsdp2_model_and_matches_the_reference(process_group, caplog):
    """`torch.compile(fully_shard(model))` on a group of one: FSDP2 must be recognised through the compile wrapper
    (not refused as tensor parallelism), the patterns must see the model's own names, and the step equals the
    reference (with one process, FSDP2's average over the processes is this process's own gradient)."""
    from torch.distributed.fsdp import fully_shard

    model = TinyClassifier()
    compiled = torch.compile(fully_shard(model), backend="eager")
    with caplog.at_level(logging.WARNING):
        amp = AMP(compiled, amp_epsilon=0.05, amp_include=[FC1])
    assert "match no parameter" not in caplog.text
    assert [name for name, _ in amp.named_parameters()] == ["fc1.weight", "fc1.bias"]
    data = DictDataset(n=8)
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.1)
    for i in range(2):
        batch = {"x": data.x[4 * i : 4 * i + 4], "labels": data.y[4 * i : 4 * i + 4]}
        with amp.perturbed(batch) as result:
            compiled(**batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        assert float(result.delta_norm) > 0
    expected = reference_amp(
        TinyClassifier(), data, steps=2, batch_size=4, epsilon=0.05, perturb=lambda name: name.startswith("fc1.")
    )
    trained = {name: p.full_tensor() for name, p in model.named_parameters()}
    for name, p in expected.named_parameters():
        torch.testing.assert_close(trained[name], p.detach(), atol=2e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
