"""Run by `test_deepspeed.py` under `torchrun --nproc_per_node 2` (CPU, gloo). Exits non-zero on any failure.

AMPTrainer through the Trainer's own DeepSpeed integration, ZeRO stages 1, 2 and 3, checked in one launch (a process
launch costs ~10 s of imports):
  1. ZeRO-1/2: each process perturbs with its own micro-batch's gradient, as under DDP, so the weights after 3 steps
     (gradient accumulation 2, the tensor and the global ball, DeepSpeed's AdamW) equal one process accumulating the
     four micro-batches of each window, each with its own Δ (`reference_amp`, plain PyTorch), as closely as the
     plain Trainer under the same engine equals the ERM reference; that tolerance is bounded, and AMP's distance to
     ERM is many times it; the engine's step and micro-step counters equal the plain Trainer's under DeepSpeed (the
     ascent runs no engine backward), and every rank ends bit-identical;
  2. ZeRO-3: every process applies its partition of one Δ computed from the gradient averaged over the processes (as
     under FSDP2), so the weights after 3 steps equal one process running AMP on the concatenated global
     micro-batches (`reference_amp`, plain PyTorch, the same AdamW or SGD), as closely as the plain Trainer under
     ZeRO-3 equals the ERM reference: DeepSpeed's AdamW with small parameters kept gathered (the engine's
     persistent parameters: their gathered copies must be refreshed after AMP writes a partition) and the tensor
     ball; the Trainer's SGD with every parameter released after use, the global ball with K = 2, the ascent on
     half of each micro-batch and the gradient averaged in several all-reduce buckets; GA 2 for both; the engine's
     counters equal the plain Trainer's;
  3. a bf16 engine (ZeRO-2 and ZeRO-3, SGD, a ball that does not bind) logs the plain Trainer's first loss, perturbs
     with the fp32 engine's Δ (its norm, step by step, within bf16 rounding) and lands by the fp32 engine's AMP run,
     far from ERM;
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
    FREE_BALL,
    DictDataset,
    SequentialAMPTrainer,
    SequentialTrainer,
    TinyClassifier,
    assert_ranks_identical,
    reference_amp,
    text_data,
    tiny_args,
    tiny_bert,
)

from amp_hf import close_process_group, deepspeed_engine, trainer_versions

STEPS = 3
ERM_GAP_BOUND = 1e-6
"""How far the plain Trainer under DeepSpeed may land from the plain-PyTorch ERM reference (float32 reordering): the
tolerance of the AMP comparisons is built from that gap, so it must stay small."""


def tolerance(erm_gap: float, what: str) -> float:
    """The AMP comparisons' tolerance: twice the engine's own ERM gap (bounded) plus float32 noise."""
    assert erm_gap <= ERM_GAP_BOUND, f"{what}: the plain Trainer is {erm_gap} from the ERM reference"
    return 2 * erm_gap + 2e-6


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


def run(
    cls, out: str, stage: int | str | None = None, bf16: bool = False, resume: str | None = None,
    client_optimizer: bool = False, **overrides,
):  # fmt: skip
    settings = dict(optim="adamw_torch", learning_rate=1e-3, max_steps=STEPS, ddp_backend="gloo", bf16=bf16)
    settings.update(overrides)
    if isinstance(stage, str):  # a shipped config file, as `--deepspeed` takes it
        settings["deepspeed"] = os.path.join(EXAMPLES, stage)
    elif stage is not None:
        settings["deepspeed"] = ds_config(stage, bf16, client_optimizer=client_optimizer)
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
        gap, tol = distance(weights(amp), expected), tolerance(erm_gap, f"ZeRO-3 {norm}")
        assert gap <= tol, f"ZeRO-3 {norm}: {gap} from the reference (ERM: {erm_gap})"
        moved = distance(expected, expected_erm)
        assert moved > 100 * tol, f"ZeRO-3 {norm}: AMP is {moved} from ERM, the tolerance {tol}: the test is vacuous"
        assert all(h["amp_delta_norm"] > 0 and h["amp_skipped"] == 0 for h in amp.state.log_history if "loss" in h)
        print(
            f"rank {rank}: ZeRO-3 {'AdamW' if adamw else 'SGD'} {norm} K={inner_steps} GA=2 f={fraction}, "
            f"{persistent} persistent parameters "
            f"== one process on the global micro-batches ({gap:.1e}; ERM {erm_gap:.1e})",
            flush=True,
        )


def check_zero12(out: str, rank: int) -> None:
    """ZeRO-1/2 against the per-process reference (see the module docstring, point 1)."""
    batch, lr = 4, 0.01

    def zero12(cls, stage: int, **settings):
        args = tiny_args(
            out, max_steps=STEPS, per_device_train_batch_size=batch, ddp_backend="gloo", deepspeed=ds_config(stage),
            learning_rate=lr, gradient_accumulation_steps=2, **settings,
        )  # fmt: skip
        trainer = cls(model=TinyClassifier(), args=args, train_dataset=DictDataset(n=64))
        trainer.train()
        return trainer

    # rank r's k-th micro-batch is global micro-batch 2k + r: a window of GA 2 on 2 processes is 4 micro-batches
    reference = dict(steps=STEPS, batch_size=batch, grad_accum=4, adamw=True, lr=lr)
    expected_erm = dict(reference_amp(TinyClassifier(), DictDataset(n=64), epsilon=0.0, **reference).named_parameters())
    for stage, norm, epsilon in ((1, "tensor", 0.05), (2, "global", 0.1)):
        erm = zero12(SequentialTrainer, stage)
        amp = zero12(SequentialAMPTrainer, stage, amp_norm=norm, amp_epsilon=epsilon)
        expected = reference_amp(TinyClassifier(), DictDataset(n=64), epsilon=epsilon, norm=norm, **reference)
        expected = dict(expected.named_parameters())
        erm_gap = distance(weights(erm), expected_erm)
        gap, tol = distance(weights(amp), expected), tolerance(erm_gap, f"ZeRO-{stage}")
        assert gap <= tol, f"ZeRO-{stage} {norm}: {gap} from the reference (ERM: {erm_gap})"
        moved = distance(expected, expected_erm)
        assert moved > 100 * tol, f"ZeRO-{stage}: AMP is {moved} from ERM, the tolerance {tol}: the test is vacuous"
        engine, erm_engine = amp.model_wrapped, erm.model_wrapped
        counters = (erm_engine.global_steps, erm_engine.micro_steps)
        assert (engine.global_steps, engine.micro_steps) == counters, ((engine.global_steps, engine.micro_steps),
                                                                       counters)  # fmt: skip
        assert all(h["amp_delta_norm"] > 0 and h["amp_skipped"] == 0 for h in amp.state.log_history if "loss" in h)
        assert_ranks_identical(amp.model)
        print(
            f"rank {rank}: ZeRO-{stage} {norm} GA=2 == one Δ per process's micro-batch ({gap:.1e}; ERM {erm_gap:.1e}; "
            f"AMP vs ERM {moved:.1e})",
            flush=True,
        )


def main() -> None:
    # one folder for both ranks (rank 0 writes the Trainer's state, every rank its engine shards): named by the port
    out = os.path.join(tempfile.gettempdir(), f"amp_hf_deepspeed_{os.environ['MASTER_PORT']}")
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ["RANK"])
    check_zero12(out, rank)
    check_zero3(out, rank)

    # the fp32 run of the same stage is the reference: ZeRO-3's Δ comes from the gradient averaged over the processes
    sgd = dict(optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", client_optimizer=True)
    erm_fp32 = weights(run(SequentialTrainer, out, **sgd))
    for stage in (2, 3):
        amp_fp32 = run(SequentialAMPTrainer, out, stage=stage, amp_epsilon=FREE_BALL, **sgd)
        fp32_norms = [h["amp_delta_norm"] for h in amp_fp32.state.log_history if "loss" in h]
        amp_fp32 = weights(amp_fp32)
        moved = distance(amp_fp32, erm_fp32)
        amp_bf16 = run(SequentialAMPTrainer, out, stage=stage, bf16=True, amp_epsilon=FREE_BALL, **sgd)
        erm_bf16 = run(SequentialTrainer, out, stage=stage, bf16=True, **sgd)
        trained = weights(amp_bf16)
        assert next(iter(amp_bf16.model.parameters())).dtype == torch.bfloat16
        amp_logs = [h for h in amp_bf16.state.log_history if "loss" in h]
        erm_logs = [h for h in erm_bf16.state.log_history if "loss" in h]
        # θ₀: the loss at θ, a mean, is the plain Trainer's once the Trainer's process factor is applied (BERT takes
        # loss kwargs but averages itself: the Trainer multiplies its loss by the process count)
        clean, plain = amp_logs[0]["amp_clean_loss"] * trainer_versions.process_factor(amp_bf16), erm_logs[0]["loss"]
        assert abs(clean - plain) <= 1e-2 * abs(plain), (clean, plain)  # in bf16, computed by another pass
        assert all(h["amp_skipped"] == 0 for h in amp_logs)
        norms = [h["amp_delta_norm"] for h in amp_logs]
        assert all(abs(a - b) <= 0.1 * b for a, b in zip(norms, fp32_norms)), (stage, norms, fp32_norms)
        assert all(torch.isfinite(p).all() for p in trained.values())
        near = distance(trained, amp_fp32)
        assert near < 0.25 * moved, f"ZeRO-{stage} bf16 AMP is {near} from fp32 AMP, which is {moved} from ERM"
        assert distance(trained, weights(erm_bf16)) > 0.5 * moved, f"ZeRO-{stage}: bf16 AMP is near bf16 ERM"
        print(f"rank {rank}: ZeRO-{stage} bf16 engine trains with AMP ({near:.1e} from fp32 AMP; ERM {moved:.1e}; "
              f"Δ norms {norms} vs {fp32_norms})", flush=True)  # fmt: skip

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
