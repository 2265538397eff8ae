"""Run by `test_deepspeed.py` under `torchrun --nproc_per_node 2` (CPU, gloo). Exits non-zero on any failure.

AMPTrainer through the Trainer's own DeepSpeed integration, ZeRO stages 1, 2 and 3, checked in one launch (a process
launch costs ~10 s of imports):
  1. ZeRO-1/2: the weights after 3 steps (gradient accumulation 2, the tensor and the global ball) equal AMPTrainer's
     without DeepSpeed (DDP, same AdamW) as closely as the plain Trainer under DeepSpeed equals the plain Trainer
     without it; the engine's step and micro-step counters equal the plain Trainer's under DeepSpeed (the ascent runs
     no engine backward), and every rank ends bit-identical;
  2. ZeRO-3: every process applies its partition of one Δ computed from the gradient averaged over the processes (as
     under FSDP2), so the weights after 3 steps equal one process running AMP on the concatenated global
     micro-batches (`reference_amp`, plain PyTorch, the same AdamW or SGD), as closely as the plain Trainer under
     ZeRO-3 equals the ERM reference: DeepSpeed's AdamW with small parameters kept gathered (the engine's
     persistent parameters: their gathered copies must be refreshed after AMP writes a partition) and the tensor
     ball; the Trainer's SGD with every parameter released after use, the global ball with K = 2, the ascent on
     half of each micro-batch and the gradient averaged in several all-reduce buckets; GA 2 for both; the engine's
     counters equal the plain Trainer's;
  3. a bf16 engine (ZeRO-2 and ZeRO-3) trains with a non-zero Δ and logs the plain Trainer's first loss;
  4. with the shipped examples/accelerate/deepspeed_zero2.json and deepspeed_zero3.json, a checkpoint saved at step 2
     and resumed gives the uninterrupted run's weights;
  5. ZeRO-3 with parameter offload is refused before training, with a message that names the field.
Two CPU processes need `use_cpu=True` (`--use_cpu`): without it the Trainer's accelerate state takes its DeepSpeed
branch, which picks no process-group backend without GPUs and counts one process while DeepSpeed counts two.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import (
    DictDataset,
    SequentialAMPTrainer,
    SequentialTrainer,
    TinyClassifier,
    reference_amp,
    text_data,
    tiny_args,
    tiny_bert,
)

from amp_hf import close_process_group, deepspeed_engine

STEPS = 3


def ds_config(stage: int, bf16: bool = False, client_optimizer: bool = False, **zero) -> dict:
    """A DeepSpeed config: AdamW by DeepSpeed, or (`client_optimizer`) the Trainer's own optimizer (SGD here)."""
    config = {
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "zero_optimization": {"stage": stage, **zero},
        "optimizer": {"type": "AdamW", "params": {"torch_adam": True, "lr": "auto", "weight_decay": "auto",
                                                  "betas": "auto", "eps": "auto"}},
    }  # fmt: skip
    if client_optimizer:
        del config["optimizer"]
        config["zero_allow_untested_optimizer"] = True
    if bf16:
        config["bf16"] = {"enabled": True}
    return config


EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "accelerate")


def run(cls, out: str, stage: int | str | None = None, bf16: bool = False, resume: str | None = None, **overrides):
    settings = dict(optim="adamw_torch", learning_rate=1e-3, max_steps=STEPS, ddp_backend="gloo", bf16=bf16)
    settings.update(overrides)
    if isinstance(stage, str):  # a shipped config file, as `--deepspeed` takes it
        settings["deepspeed"] = os.path.join(EXAMPLES, stage)
    elif stage is not None:
        settings["deepspeed"] = ds_config(stage, bf16)
    trainer = cls(model=tiny_bert(), args=tiny_args(out, **settings), train_dataset=text_data())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def weights(trainer) -> dict[str, torch.Tensor]:
    """The whole weights (gathered from the partitions under ZeRO-3), in float32."""
    params = list(trainer.model.parameters())
    partitioned = [p for p in params if hasattr(p, "ds_tensor")]
    if partitioned:
        import deepspeed

        with deepspeed.zero.GatheredParameters(partitioned):
            return {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    return {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def assert_ranks_identical(trainer) -> None:
    for name, p in trainer.model.named_parameters():
        gathered = [torch.empty_like(p) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, p.detach().contiguous())
        assert all(torch.equal(gathered[0], g) for g in gathered[1:]), f"{name} differs across ranks"


def heads_of_each_rank(batch: int):
    """The rows of the global micro-batch that the ranks' ascents see with amp_ascent_fraction = 0.5: each rank's
    first half (rank r's micro-batch is rows r·batch to (r + 1)·batch)."""
    rows = [*range(batch // 2), *range(batch, batch + batch // 2)]
    return lambda global_batch: {k: v[rows] for k, v in global_batch.items()}


def check_zero3(out: str, rank: int) -> None:
    """ZeRO-3 against one process on the global micro-batches (see the module docstring, point 2)."""
    batch = 4

    def zero3(cls, epsilon: float, adamw: bool, **settings):
        zero = settings.pop("zero", {})
        args = tiny_args(
            out, max_steps=STEPS, per_device_train_batch_size=batch, ddp_backend="gloo", amp_epsilon=epsilon,
            deepspeed=ds_config(3, client_optimizer=not adamw, **zero), learning_rate=0.01 if adamw else 0.1,
            **settings,
        )  # fmt: skip
        trainer = cls(model=TinyClassifier(), args=args, train_dataset=DictDataset(n=64))
        trainer.train()
        return trainer

    for norm, epsilon, inner_steps, fraction, adamw, zero in (
        # DeepSpeed's AdamW; the default persistence threshold keeps every (small) parameter gathered
        ("tensor", 0.5, 1, 1.0, True, {}),
        # the Trainer's SGD as a client optimizer; every parameter released after use
        ("global", 0.7, 2, 0.5, False, {"stage3_param_persistence_threshold": 0}),
    ):
        # small all-reduce buckets in the second case: the gradient is averaged in several of them
        deepspeed_engine.ZERO3_BUCKET_ELEMENTS = 30 if zero else 1 << 24
        settings = dict(
            gradient_accumulation_steps=2, amp_norm=norm, amp_inner_steps=inner_steps, amp_ascent_fraction=fraction,
            zero=zero,
        )  # fmt: skip
        erm = zero3(SequentialTrainer, 0.0, adamw, **settings)
        amp = zero3(SequentialAMPTrainer, epsilon, adamw, **settings)
        engine = amp.model_wrapped
        assert all(hasattr(p, "ds_tensor") for p in amp.model.parameters()), "ZeRO-3 did not partition the model"
        persistent = len(engine.optimizer.persistent_parameters)
        assert persistent == (0 if zero else 4), persistent
        counters = (erm.model_wrapped.global_steps, erm.model_wrapped.micro_steps)
        assert (engine.global_steps, engine.micro_steps) == counters, ((engine.global_steps, engine.micro_steps),
                                                                       counters)  # fmt: skip
        reference = dict(steps=STEPS, batch_size=2 * batch, grad_accum=2, inner_steps=inner_steps, norm=norm,
                         adamw=adamw, lr=0.01 if adamw else 0.1)  # fmt: skip
        head = heads_of_each_rank(batch) if fraction < 1 else None
        expected = reference_amp(TinyClassifier(), DictDataset(n=64), epsilon=epsilon, ascent_head=head, **reference)
        expected_erm = reference_amp(TinyClassifier(), DictDataset(n=64), epsilon=0.0, **reference)
        expected, expected_erm = (dict(m.named_parameters()) for m in (expected, expected_erm))
        erm_gap = distance(weights(erm), expected_erm)
        gap = distance(weights(amp), expected)
        assert gap <= 2 * erm_gap + 2e-6, f"ZeRO-3 {norm}: {gap} from the reference (ERM: {erm_gap})"
        assert distance(expected, expected_erm) > 1e-2, "AMP did not move the weights: the comparison is vacuous"
        assert all(h["amp_delta_norm"] > 0 and h["amp_skipped"] == 0 for h in amp.state.log_history if "loss" in h)
        print(
            f"rank {rank}: ZeRO-3 {'AdamW' if adamw else 'SGD'} {norm} K={inner_steps} GA=2 f={fraction}, "
            f"{persistent} persistent parameters "
            f"== one process on the global micro-batches ({gap:.1e}; ERM {erm_gap:.1e})",
            flush=True,
        )


def main() -> None:
    # one folder for both ranks (rank 0 writes the Trainer's state, every rank its engine shards): named by the port
    out = os.path.join(tempfile.gettempdir(), f"amp_hf_deepspeed_{os.environ['MASTER_PORT']}")
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ["RANK"])
    erm_ds = run(SequentialTrainer, out, stage=2, gradient_accumulation_steps=2)
    assert erm_ds.args.world_size == 2 and dist.get_world_size() == 2
    erm_gap = distance(weights(erm_ds), weights(run(SequentialTrainer, out, gradient_accumulation_steps=2)))
    counters = (erm_ds.model_wrapped.global_steps, erm_ds.model_wrapped.micro_steps)
    erm_plain = weights(run(SequentialTrainer, out, gradient_accumulation_steps=2))
    for stage, norm, epsilon in ((1, "tensor", 0.05), (2, "global", 0.1)):
        amp = dict(amp_norm=norm, amp_epsilon=epsilon, gradient_accumulation_steps=2)
        amp_ds = run(SequentialAMPTrainer, out, stage=stage, **amp)
        amp_plain = weights(run(SequentialAMPTrainer, out, **amp))
        gap = distance(weights(amp_ds), amp_plain)
        assert gap <= 2 * erm_gap + 2e-6, f"ZeRO-{stage} {norm}: {gap} from AMP without DeepSpeed (ERM: {erm_gap})"
        assert distance(amp_plain, erm_plain) > 1e-3, "AMP did not move the weights: the comparison is vacuous"
        engine = amp_ds.model_wrapped
        assert (engine.global_steps, engine.micro_steps) == counters, (
            (engine.global_steps, engine.micro_steps),
            counters,
        )
        assert all(h["amp_delta_norm"] > 0 for h in amp_ds.state.log_history if "loss" in h)
        assert_ranks_identical(amp_ds)
        print(
            f"rank {rank}: ZeRO-{stage} {norm} GA=2 == AMP without DeepSpeed ({gap:.1e}; ERM {erm_gap:.1e})", flush=True
        )

    check_zero3(out, rank)

    for stage in (2, 3):
        amp_bf16 = run(SequentialAMPTrainer, out, stage=stage, bf16=True, amp_epsilon=0.05)
        erm_bf16 = run(SequentialTrainer, out, stage=stage, bf16=True)
        trained = weights(amp_bf16)
        assert next(iter(amp_bf16.model.parameters())).dtype == torch.bfloat16
        amp_logs = [h for h in amp_bf16.state.log_history if "loss" in h]
        erm_logs = [h for h in erm_bf16.state.log_history if "loss" in h]
        assert amp_logs[0]["loss"] == erm_logs[0]["loss"] and all(h["amp_delta_norm"] > 0 for h in amp_logs)
        assert all(torch.isfinite(p).all() for p in trained.values())
        assert distance(trained, weights(erm_bf16)) > 0, "AMP changed nothing"
        print(f"rank {rank}: ZeRO-{stage} bf16 engine trains with AMP", flush=True)

    common = dict(amp_epsilon=0.05, max_steps=4, save_strategy="steps", save_steps=2)
    for example in ("deepspeed_zero2.json", "deepspeed_zero3.json"):
        whole = weights(run(SequentialAMPTrainer, out + "/whole", stage=example, **common))
        run(SequentialAMPTrainer, out + "/cut", stage=example, **{**common, "max_steps": 2})
        resumed = run(SequentialAMPTrainer, out + "/resumed", stage=example, resume=out + "/cut/checkpoint-2", **common)
        assert distance(weights(resumed), whole) == 0.0, distance(weights(resumed), whole)
        print(f"rank {rank}: {example} checkpoint resumed == uninterrupted run", flush=True)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(out + "/cut", ignore_errors=True)

    offload = ds_config(3, offload_param={"device": "cpu"})
    try:
        SequentialAMPTrainer(
            model=tiny_bert(), train_dataset=text_data(),
            args=tiny_args(out, ddp_backend="gloo", optim="adamw_torch", deepspeed=offload),
        )  # fmt: skip
    except ValueError as err:
        assert "offload_param.device='cpu'" in str(err) and "allowed: 'none'" in str(err), err
    else:
        raise AssertionError("ZeRO-3 with parameter offload was accepted")
    print(f"rank {rank}: ZeRO-3 with parameter offload refused at construction", flush=True)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(out, ignore_errors=True)
    print(f"rank {rank}: ALL OK", flush=True)
    close_process_group()


if __name__ == "__main__":
    main()
