"""Run by `test_distributed.py` under `torchrun --nproc_per_node 2` (CPU, gloo). Exits non-zero on any failure.

Checks, in one launch (a process launch costs ~10 s of imports):
  1. two processes with batch b each give the weights of one process accumulating two micro-batches of b, each with
     its own perturbation (the plain-PyTorch reference), not those of one Δ from the averaged gradient (one process on
     the batch of 2b), and every rank ends bit-identical;
  2. per optimizer step, AMP makes exactly as many gradient all-reduces and passes through the DDP wrapper (where
     buffer broadcasts happen) as the plain Trainer: the ascent passes communicate nothing;
  3. a token-normalised loss with `average_tokens_across_devices` does not change the ascent's scale: with a ball
     that does not bind, the reference matches and the references whose ascent is scaled by 1/2 or 2 (the process
     factor left in, the window's count) do not;
  4. the ascent on half of each process's micro-batch (`amp_ascent_fraction`) matches the reference;
  5. at θ + Δ == θ (ε = 1e-30) the logged `loss` equals the plain Trainer's `loss`, for a model that
     honours `num_items_in_batch` and one that accepts it but averages itself (BERT's case: it logged half);
  6. a loss that overflows at θ + Δ: the micro-batch is trained at θ through the DDP wrapper (a second forward
     before the backward), the weights stay finite and equal the plain Trainer's, on every rank;
  7. decisions taken together: with a `compute_loss` that runs a collective (as TRL's metric gathering does), a loss
     that overflows at θ + Δ on rank 1 only makes both ranks fall back to θ in the descent (K = 1) and both skip
     the rest of the ascent (K = 3): the same number of `compute_loss` calls on both ranks (a rank deciding alone
     calls it once more or less, and the collectives pair up wrongly or hang), the plain Trainer's weights;
  8. reentrant gradient checkpointing under DDP: the ascent's real backward through the module inside the wrapper
     communicates nothing (all-reduces and DDP passes per step equal the plain Trainer's) and the weights equal the
     accumulated reference.
  9. amp_direction='momentum' (SGD with momentum): the replicated first moment gives every rank the same Δ, the
     weights of the accumulating reference, and the plain Trainer's communication per step.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback

from amp_hf import close_process_group, trainer_versions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from edge_models import OverflowsOnRank, ReentrantCheckpointed
from helpers import (
    FREE_BALL,
    DictDataset,
    MeanLossWithKwargs,
    MomentumAMPTrainer,
    OverflowsWhenPushed,
    SequentialAMPTrainer,
    SequentialTrainer,
    TinyClassifier,
    TokenNormalisedClassifier,
    assert_close_to,
    assert_only_the_right_scale_matches,
    assert_params_far,
    assert_ranks_identical,
    reference_amp,
    reference_momentum_amp,
    tiny_args,
)

STEPS, BATCH = 3, 4
counts = {"allreduce": 0, "ddp_forward": 0}


class CountCommunication(TrainerCallback):
    """Counts gradient all-reduces (a DDP comm hook) once the Trainer has wrapped the model."""

    def __init__(self, trainer_ref: list) -> None:
        self.trainer_ref = trainer_ref

    def on_train_begin(self, args, state, control, **kwargs):
        wrapped = self.trainer_ref[0].model_wrapped
        assert isinstance(wrapped, DistributedDataParallel), type(wrapped)

        def hook(process_group, bucket):
            counts["allreduce"] += 1
            return allreduce_hook(process_group, bucket)

        wrapped.register_comm_hook(None, hook)


_ddp_forward = DistributedDataParallel.forward


def counting_forward(self, *args, **kwargs):
    counts["ddp_forward"] += 1
    return _ddp_forward(self, *args, **kwargs)


DistributedDataParallel.forward = counting_forward


def run(trainer_cls, model, data, out, **overrides):
    counts.update(allreduce=0, ddp_forward=0)
    args = tiny_args(
        out, **{"max_steps": STEPS, "per_device_train_batch_size": BATCH, "ddp_backend": "gloo", **overrides}
    )
    ref: list = []
    trainer = trainer_cls(model=model, args=args, train_dataset=data, callbacks=[CountCommunication(ref)])
    ref.append(trainer)
    trainer.train()
    return trainer, dict(counts)


class CollectiveInComputeLoss(SequentialAMPTrainer):
    """A `compute_loss` that all-reduces a metric, as TRL's SFTTrainer does: every rank must call it equally often."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.loss_calls = getattr(self, "loss_calls", 0) + 1
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        metric = loss.detach().clone().reshape(1)
        dist.all_reduce(metric)
        return loss


def assert_same_on_every_rank(value, what: str) -> None:
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    assert all(g == gathered[0] for g in gathered), f"{what}: {gathered}"


def main() -> None:
    out = tempfile.mkdtemp()
    data = DictDataset(n=64)

    amp, amp_counts = run(SequentialAMPTrainer, TinyClassifier(), data, out, amp_epsilon=0.05)
    assert dist.get_world_size() == 2 and amp.args.world_size == 2
    expected = reference_amp(TinyClassifier(), data, steps=STEPS, batch_size=BATCH, grad_accum=2, epsilon=0.05)
    assert_close_to(amp.model, expected, "2 processes vs 1 process accumulating 2 micro-batches")
    one_delta = reference_amp(TinyClassifier(), data, steps=STEPS, batch_size=2 * BATCH, epsilon=0.05)
    assert_params_far(amp.model, one_delta, what="one Δ per process vs one Δ of the averaged gradient")
    assert_ranks_identical(amp.model)
    print(f"rank {dist.get_rank()}: DDP == accumulated reference, ranks identical", flush=True)

    _, erm_counts = run(SequentialTrainer, TinyClassifier(), data, out)
    assert amp_counts == erm_counts, (amp_counts, erm_counts)
    assert amp_counts["allreduce"] == STEPS and amp_counts["ddp_forward"] == STEPS, amp_counts
    print(f"rank {dist.get_rank()}: communication per step AMP {amp_counts} == ERM {erm_counts}", flush=True)

    tokens = DictDataset(n=64, ignored_every=3)
    amp_tok, _ = run(SequentialAMPTrainer, TokenNormalisedClassifier(), tokens, out, amp_epsilon=FREE_BALL)
    assert amp_tok.model_accepts_loss_kwargs and amp_tok.args.average_tokens_across_devices
    assert trainer_versions.process_factor(amp_tok) == 2  # the factor the Trainer applied, which the ascent divides out
    assert_only_the_right_scale_matches(
        amp_tok.model,
        lambda inner_lr: reference_amp(
            TokenNormalisedClassifier(), tokens, steps=STEPS, batch_size=BATCH, grad_accum=2, epsilon=FREE_BALL,
            inner_lr=inner_lr, token_normalised=True,
        ),
    )  # fmt: skip
    assert_ranks_identical(amp_tok.model)
    print(f"rank {dist.get_rank()}: token-normalised DDP == reference", flush=True)

    amp_head, _ = run(SequentialAMPTrainer, TinyClassifier(), data, out, amp_epsilon=0.05, amp_ascent_fraction=0.5)
    expected_head = reference_amp(
        TinyClassifier(), data, steps=STEPS, batch_size=BATCH, grad_accum=2, epsilon=0.05, ascent_fraction=0.5
    )
    assert_close_to(amp_head.model, expected_head, "ascent on half of each process's micro-batch")
    assert_params_far(amp_head.model, expected, what="the head's ascent vs the whole micro-batch's")
    assert_ranks_identical(amp_head.model)
    print(f"rank {dist.get_rank()}: ascent fraction DDP == reference", flush=True)

    for model_cls, dataset in ((MeanLossWithKwargs, data), (TokenNormalisedClassifier, tokens)):
        amp_at_theta, _ = run(SequentialAMPTrainer, model_cls(), dataset, out, amp_epsilon=1e-30)
        erm_at_theta, _ = run(SequentialTrainer, model_cls(), dataset, out)
        amp_logs = [e for e in amp_at_theta.state.log_history if "loss" in e]
        erm_loss = [e["loss"] for e in erm_at_theta.state.log_history if "loss" in e]
        for key in ("loss",):  # the Trainer's own number (amp_clean_loss, a mean of means: test_trainer_loss.py)
            got = [e[key] for e in amp_logs]
            assert all(abs(a - b) <= 1e-6 * abs(b) + 1e-7 for a, b in zip(got, erm_loss)), (
                model_cls,
                key,
                got,
                erm_loss,
            )
    print(f"rank {dist.get_rank()}: logged loss == the Trainer's with 2 processes", flush=True)

    # one step, at θ₀: θ + Δ overflows on both ranks, so both retrain at θ: the plain Trainer's step exactly
    overflow, _ = run(SequentialAMPTrainer, OverflowsWhenPushed(), data, out, max_steps=1)
    plain, _ = run(SequentialTrainer, OverflowsWhenPushed(), data, out, max_steps=1)
    assert sum(e["amp_skipped"] for e in overflow.state.log_history if "loss" in e) == 2  # one per rank, summed
    assert_close_to(overflow.model, plain.model, "overflow at θ + Δ under DDP")
    assert_ranks_identical(overflow.model)
    print(f"rank {dist.get_rank()}: overflow at θ + Δ trained at θ under DDP", flush=True)

    # rank 1 overflows at θ + Δ, rank 0 does not: K = 1, the descent falls back on both; K = 3, the ascent's second
    # pass is not finite on rank 1, and both skip its third pass. Either way: the plain Trainer's step at θ.
    plain, _ = run(SequentialTrainer, OverflowsOnRank(), data, out, max_steps=1)
    for inner_steps, calls in ((1, 3), (3, 3)):  # clean, θ + Δ, θ  |  clean, second ascent pass, descent at θ
        one_rank, _ = run(
            CollectiveInComputeLoss, OverflowsOnRank(), data, out, max_steps=1, amp_inner_steps=inner_steps
        )
        assert_same_on_every_rank(one_rank.loss_calls, f"compute_loss calls, K = {inner_steps}")
        assert one_rank.loss_calls == calls, (inner_steps, one_rank.loss_calls)
        assert one_rank.state.log_history[0]["amp_skipped"] == 2, one_rank.state.log_history  # both ranks
        assert_close_to(one_rank.model, plain.model, f"overflow on rank 1 only, K = {inner_steps}")
        assert_ranks_identical(one_rank.model)
    print(f"rank {dist.get_rank()}: overflow on one rank: every rank decided alike", flush=True)

    momentum = dict(amp_direction="momentum", amp_norm="global", amp_epsilon=0.3)
    msam, msam_counts = run(MomentumAMPTrainer, TinyClassifier(), data, out, **momentum)
    expected_msam = reference_momentum_amp(
        TinyClassifier(), data, steps=STEPS, batch_size=BATCH, grad_accum=2, epsilon=0.3
    )
    assert_close_to(msam.model, expected_msam, "momentum direction, 2 processes")
    assert_ranks_identical(msam.model)
    assert msam_counts == erm_counts, (msam_counts, erm_counts)
    print(f"rank {dist.get_rank()}: momentum direction matches the accumulating reference, {msam_counts}", flush=True)

    ckpt, ckpt_counts = run(
        SequentialAMPTrainer, ReentrantCheckpointed(), data, out, amp_epsilon=0.05, ddp_find_unused_parameters=False
    )  # DDP must not look for unused parameters: they hide inside the reentrant checkpoint's segment
    assert ckpt._amp._reentrant[1]
    assert ckpt_counts == erm_counts, (ckpt_counts, erm_counts)
    assert_close_to(ckpt.model, expected, "reentrant checkpointing under DDP")
    assert_ranks_identical(ckpt.model)
    print(f"rank {dist.get_rank()}: reentrant checkpointing under DDP == reference, {ckpt_counts}", flush=True)
    print(f"rank {dist.get_rank()}: ALL OK", flush=True)
    close_process_group()  # without it, torch 2.13's gloo threads abort the process at exit (5 of 20 launches)


if __name__ == "__main__":
    main()
