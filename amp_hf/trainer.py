"""Trainer glue: run the AMP step of `perturbation.py` inside the Hugging Face Trainer's own training step.

Per micro-batch, on an AMP step:
  1. ascent passes (clean + K − 1): `compute_loss` as the Trainer calls it, but with the micro-batch's own item count
     as `num_items_in_batch` (when the Trainer passes a count at all), so every loss path (a model honouring the count
     or ignoring it, a `compute_loss_func` dividing by it, the label smoother) gives the micro-batch's **mean** loss.
     Its gradient comes from `torch.autograd.grad` on the model without its DDP wrapper, unscaled by the fp16
     GradScaler's scale: `.grad` is left as it was and no gradient is communicated, whatever the accumulation or the
     process count. (Under reentrant gradient checkpointing, whose backward refuses `torch.autograd.grad`, a real
     backward with every `.grad` moved aside and put back.) With `amp_ascent_fraction` < 1 these passes see the head
     of the micro-batch only (`batch.py`).
  2. descent pass at θ + Δ: `Trainer.training_step` itself, so loss scaling, the label smoother, `compute_loss_func`,
     custom `compute_loss` overrides, accumulation and DDP gradient sync behave exactly as in the plain Trainer. A
     descent loss that is not finite is never back-propagated: the micro-batch is retrained at θ instead, from its
     own copy of the inputs.
  3. θ is copied back (also on error) and running statistics are put back to their post-clean-pass values.

Decisions (skip a non-finite ascent, fall back in the descent) are taken by every process together whenever the run
is distributed: one all-reduced flag per inner step and per descent pass. A process deciding alone would call
`compute_loss` a different number of times than the others, and any collective inside it (SyncBatchNorm, TRL's
metric gathering) would pair up wrongly or hang.

The logged `loss` is the Trainer's own number for the clean pass: the loss tensor the Trainer receives in the descent
pass carries the descent's gradient but the clean loss's value, on the Trainer's scale, so the Trainer's own
post-processing (accumulation, process count, its NaN filter) turns it into what it would have logged at θ. The
count is passed as a tensor that autograd follows, so how the loss depends on the count is measured, not guessed.

FSDP2 (`fully_shard`) differs in step 1, by necessity: each process holds only shards, the forward runs on
all-gathered copies that are not the parameters autograd can differentiate to, and a gradient reaches the shards only
through FSDP's reduce-scatter, which averages it over the processes. A per-process Δ would need a full-size Δ on each
process, which is what sharding avoids. So under FSDP2 the ascent gradient is the **average over the processes** of
each process's micro-batch mean-loss gradient, taken by a real backward with every `.grad` moved aside and put back,
and each process perturbs its shards with whole-tensor norms (`perturbation.py`). With equal micro-batches that is
one process running AMP on the concatenation of all processes' micro-batches. AMP micro-batches reduce-scatter on
every pass (the ascent needs it; the descent then accumulates into the sharded `.grad`, as with accelerate's
`sync_each_batch`), so no unsharded gradient accumulates outside FSDP's sharded `.grad`. FSDP2 keeps the root
module's gathered parameters after its forward and registers them in place of the shards meanwhile: the step
reshards before it lists the parameters and before a forward at θ after one at θ + Δ.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import record_function
from transformers import Seq2SeqTrainer, Trainer

try:  # public since torch 2.6; builds without distributed support have no FSDP2
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
except ImportError:  # pragma: no cover - depends on the torch build
    CPUOffloadPolicy = FSDPModule = None

from . import deepspeed_engine, selection, trainer_versions
from .batch import head_of_batch
from .compare.recording import add_comparison_recorder
from .config import AMPConfig
from .perturbation import AscentResult, ThetaBuffers, on_every_process, perturbed_weights
from .running_stats import RunningStatsSnapshot
from .sharding import is_partitioned, is_sharded
from .wrapped_models import (
    grad_scaler_scale,
    gradient_by_backward,
    has_reentrant_checkpoint,
    reshard,
    world_if_distributed,
)
from .wrapped_models import is_fsdp2 as _is_fsdp2
from .wrapped_models import without_ddp as _without_ddp

logger = logging.getLogger(__name__)

METRIC_KEYS = ("amp_loss", "amp_delta_norm", "amp_skipped", "amp_steps")

STEPS_IN_BACKWARD = ("lomo", "adalomo", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise")
STEPS_IN_BACKWARD += ("galore_adafactor_layerwise", "apollo_adamw_layerwise")
"""`optim` values whose optimizer updates the weights during `backward`: under AMP it would step at θ + Δ."""

_REENTRANT_UNDER_DEEPSPEED = (
    "AMPTrainer under DeepSpeed does not support reentrant gradient checkpointing (gradient_checkpointing_kwargs "
    "{'use_reentrant': True}, the default of transformers 4.x): a reentrant checkpoint refuses "
    "torch.autograd.grad, so the ascent gradient could only be taken by a real backward, which would feed the "
    "engine's gradient buffers. Set gradient_checkpointing_kwargs={'use_reentrant': False}, or set "
    "amp_inner_steps=0 / amp_epsilon=0 for plain training."
)


class AMPMixin:
    """Adds Adversarial Model Perturbation to a `Trainer` subclass: `class X(AMPMixin, SomeTrainer)`.

    The AMP settings come from the `amp_*` fields of `args` (see `AMPTrainingArguments`); a plain `TrainingArguments`
    gets the reference defaults. Everything but `training_step` and `log` is the wrapped Trainer's (in the descent
    pass, `compute_loss`'s value is swapped for the clean loss's: `_amp_swapped_loss`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.amp_config = self._read_amp_config(announce_defaults=True)
        self._amp_candidates: tuple[int, list[tuple[str, torch.nn.Parameter]]] | None = None
        self._amp_saved: ThetaBuffers | None = None
        self._amp_window = _MetricsWindow()
        self._amp_announced = False
        self._amp_warned_descent = False
        self._amp_reentrant: tuple[int, bool] | None = None
        add_comparison_recorder(self)  # records the run's numbers when amp_hf.compare started it

    # ----------------------------------------------------------------------------------------------- configuration
    def _read_amp_config(self, announce_defaults: bool = False) -> AMPConfig:
        """The validated settings of `self.args`; refuses the back-ends AMP cannot run on correctly."""
        config = AMPConfig.from_args(self.args)
        missing = AMPConfig.missing_from(self.args)
        if missing and config.enabled and announce_defaults:
            logger.warning(
                "%s got %s without the AMP fields (%s), so the reference defaults apply: %s. Those are the paper's "
                "settings for CNNs trained with SGD; on vision transformers trained with AdamW they diverge and they "
                "wreck the fine-tuning of pretrained models (README, 'Choosing ε'). Use AMPTrainingArguments (or "
                "AMPArgumentsMixin) to set them.",
                type(self).__name__,
                type(self.args).__name__,
                ", ".join(missing),
                config,
            )
        if not config.enabled:
            return config
        if getattr(self, "is_deepspeed_enabled", False):
            deepspeed_engine.check_supported(self.accelerator)
        optim = str(getattr(getattr(self.args, "optim", None), "value", getattr(self.args, "optim", "")))
        optimizer_name = type(getattr(self, "optimizer", None)).__name__
        if optim in STEPS_IN_BACKWARD or optimizer_name in ("LOMO", "AdaLomo"):
            raise ValueError(
                f"AMPTrainer does not support optim={optim!r} ({optimizer_name}): it updates the weights during "
                "backward, so under AMP it would step at the perturbed weights θ + Δ and the restore of θ would undo "
                f"the step. Choose an optim that steps after backward (not one of {', '.join(STEPS_IN_BACKWARD)}), or "
                "set amp_inner_steps=0 / amp_epsilon=0 for plain training."
            )
        if getattr(self, "is_fsdp_enabled", False):
            self._check_fsdp_plugin()
        self._check_supported_features()
        return config

    def _check_supported_features(self) -> None:
        """Refuses the Trainer features AMP cannot run correctly, naming the field, before anything trains."""
        args = self.args
        refuse = "AMPTrainer does not support {what}: {why}. {instead}, or set amp_inner_steps=0 / amp_epsilon=0 for "
        refuse += "plain training."
        if getattr(args, "n_gpu", 1) > 1:
            raise ValueError(
                refuse.format(
                    what=f"nn.DataParallel (n_gpu={args.n_gpu}: several GPUs seen by one process that was not "
                    "launched as a distributed run)",
                    why="the Trainer splits each micro-batch over the GPUs inside one forward, so the ascent's loss "
                    "and its item count are not one micro-batch's, and every ascent pass would replicate the model",
                    instead="Launch one process per GPU (torchrun --nproc_per_node N, or accelerate launch), which "
                    "is DDP, or make one GPU visible (CUDA_VISIBLE_DEVICES=0)",
                )
            )
        parallelism = getattr(args, "parallelism_config", None) or getattr(self.accelerator, "parallelism_config", None)
        for name, kind in (("cp_size", "context parallelism"), ("sp_size", "sequence parallelism")):
            size = getattr(parallelism, name, None) or 1
            if size > 1:
                raise ValueError(
                    refuse.format(
                        what=f"{kind} (parallelism_config.{name}={size}; allowed: 1)",
                        why="each process holds a slice of every sequence, so its loss and gradient are not a "
                        "micro-batch's and the perturbation would differ between the slices",
                        instead="Use data parallelism (DDP or FSDP2) with parallelism_config.cp_size = sp_size = 1",
                    )
                )
        tp_size = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
        tp_size = max(tp_size, getattr(parallelism, "tp_size", None) or 1)
        if tp_size > 1:
            raise ValueError(
                refuse.format(
                    what=f"tensor parallelism (tensor-parallel size {tp_size}: the model's tp_plan / tp_size, "
                    "parallelism_config.tp_size or DeepSpeed's tensor_parallel.autotp_size; allowed: 1)",
                    why="each process holds a slice of the weight tensors, and the norms of the ball would be those "
                    "of the slices",
                    instead="Load the model without tp_plan and use DDP or FSDP2",
                )
            )
        if getattr(args, "half_precision_backend", None) == "apex":
            raise ValueError(
                refuse.format(
                    what="half_precision_backend='apex'",
                    why="apex scales the loss inside its own backward, so the ascent gradient would not be unscaled "
                    "and overflows would not be caught the way they are for the GradScaler",
                    instead="Use half_precision_backend='auto' (torch.amp: fp16 with the GradScaler, or bf16)",
                )
            )
        if getattr(args, "past_index", -1) >= 0:
            raise ValueError(
                refuse.format(
                    what=f"past_index={args.past_index} (allowed: -1)",
                    why="the Trainer keeps the model's memory output (`_past`) from each forward and feeds it to the "
                    "next, so the ascent passes would advance it too",
                    instead="Train without past_index",
                )
            )
        kwargs = getattr(args, "gradient_checkpointing_kwargs", None) or {}
        if getattr(self, "is_deepspeed_enabled", False) and args.gradient_checkpointing and kwargs.get("use_reentrant"):
            raise ValueError(_REENTRANT_UNDER_DEEPSPEED)

    def _check_fsdp_plugin(self) -> None:
        """FSDP2 is supported; FSDP1 and parameter offloading are refused here, before anything runs."""
        plugin = getattr(getattr(getattr(self, "accelerator", None), "state", None), "fsdp_plugin", None)
        version = getattr(plugin, "fsdp_version", 1)  # the Trainer reads a missing version as 1 too
        if version != 2 or FSDPModule is None:
            raise ValueError(
                f"AMPTrainer does not support FSDP version {version}: it perturbs FSDP2 (`fully_shard`) shards with "
                "whole-tensor norms, and FSDP1's flat parameters hide the tensors. Use FSDP2 (fsdp_config "
                "{'version': 2}, or `fsdp_version: 2` in the accelerate config, as in "
                "examples/accelerate/fsdp_gpu.yaml) or DDP, or set amp_inner_steps=0 / amp_epsilon=0 for plain "
                "training."
            )
        if CPUOffloadPolicy is not None and isinstance(getattr(plugin, "cpu_offload", None), CPUOffloadPolicy):
            raise ValueError(
                "AMPTrainer does not support FSDP2 with CPU offload (`cpu_offload` / `fsdp_offload_params`): it is "
                "not verified that the perturbation and the reductions of its norms run where offloaded shards and "
                "gradients live. Use FSDP2 without offload, or DDP, or set amp_inner_steps=0 / amp_epsilon=0."
            )

    def train(self, *args: Any, **kwargs: Any):
        # Arguments may have been edited since construction (or by a hyper-parameter search trial): validate again
        # before any training starts.
        self.amp_config = self._read_amp_config()
        self._amp_candidates = None
        self._amp_reentrant = None
        self._amp_window = _MetricsWindow()
        self._amp_announced = False
        try:
            return super().train(*args, **kwargs)
        finally:
            self._amp_saved = None  # θ's buffers live from the first AMP step to the end of training

    def _hp_search_setup(self, trial: Any) -> None:
        # `Trainer.train` applies a search trial's values to `self.args` here, after `train` above read them: read
        # (and validate) them again, so that each trial trains with its own AMP settings.
        super()._hp_search_setup(trial)
        if trial is not None and AMPConfig.missing_from(self.args):
            logger.warning(
                "%s: hyper-parameter search with %s, which has no amp_* fields: amp_* keys of the search space are "
                "ignored. Use AMPTrainingArguments.",
                type(self).__name__,
                type(self.args).__name__,
            )
        self.amp_config = self._read_amp_config()
        self._amp_candidates = None

    def _amp_saved_buffers(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Where θ is kept during each AMP step: allocated once, reused every step (see `save_buffers`)."""
        if self._amp_saved is None:
            self._amp_saved = ThetaBuffers()
        return self._amp_saved.for_params(params)

    # ------------------------------------------------------------------------------------ what AMP perturbs
    def amp_parameters(self, model: torch.nn.Module | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of every tensor AMP perturbs now: trainable, selected by `amp_include` / `amp_exclude`.

        Names are those of the model itself, without the `module.` / `_orig_mod.` prefixes of DDP and torch.compile,
        so patterns read the same however the run is launched. `requires_grad` is read on every call: a parameter
        frozen or unfrozen during training leaves or joins the perturbed set at the next step.
        """
        model = self.model if model is None else model
        # The name test is cached, keyed by the model as passed: unwrapping costs ~0.1 ms, as much as AMP's glue.
        if self._amp_candidates is None or self._amp_candidates[0] != id(model):
            unwrapped = self.accelerator.unwrap_model(model, keep_torch_compile=False)
            self._amp_candidates = (id(model), selection.candidates(unwrapped, self.amp_config))
        return [(name, p) for name, p in self._amp_candidates[1] if p.requires_grad]

    def amp_parameter_names(self, model: torch.nn.Module | None = None) -> list[str]:
        """The names of the parameters AMP perturbs now (the model's own names, which the patterns are matched to)."""
        return [name for name, _ in self.amp_parameters(model)]

    def _amp_announce(self, model: torch.nn.Module) -> None:
        """One line when training starts: what AMP perturbs; a warning for patterns that match nothing."""
        self._amp_announced = True
        if not self.amp_config.enabled:
            return
        unwrapped = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        found = selection.report(unwrapped, self.amp_config)
        if self.args.should_log:
            logger.info("%s; settings %s", found.summary(), self.amp_config)
            for problem in found.problems():
                logger.warning(problem)

    # -------------------------------------------------------------------------------------------------- the step
    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        if not self._amp_announced:
            self._amp_announce(model)
        if not self.amp_config.applies_at(self.state.global_step):
            return super().training_step(model, inputs, num_items_in_batch)
        engine = deepspeed_engine.engine_of(model)
        ascent_model = engine.module if engine is not None else _without_ddp(model)
        sharded_trainable = None
        if _is_fsdp2(ascent_model):
            # FSDP2 registers a module's gathered parameters in place of its shards while they are gathered, and
            # keeps the root's gathered after its forward (an evaluation leaves them so too): reshard first, so that
            # the parameters listed here, the ones AMP perturbs and the ones whose `.grad` the ascent moves aside,
            # are the shards, before any forward of this micro-batch.
            reshard(ascent_model)
            sharded_trainable = [p for p in ascent_model.parameters() if p.requires_grad]
        params = [p for _, p in self.amp_parameters(model)]
        if not params:
            return super().training_step(model, inputs, num_items_in_batch)

        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()  # schedule-free optimizers swap their weights in here: do it before the ascent
        if sharded_trainable is not None:
            # Every pass of an AMP micro-batch reduce-scatters: the ascent must (its gradient arrives no other way),
            # and then the descent does too, accumulating into the sharded `.grad` instead of an unsharded buffer
            # that the ascent's reduce-scatter would otherwise carry along. The Trainer's `no_sync` turns sync on again
            # when it exits, as it always does.
            ascent_model.set_requires_gradient_sync(True)
        ascent_inputs = head_of_batch(inputs, self.amp_config.ascent_fraction)
        descent = _Descent(fsdp_root=ascent_model if _is_fsdp2(ascent_model) else None)
        stats: RunningStatsSnapshot | None = None

        def ascent_gradient() -> tuple[torch.Tensor, list[torch.Tensor]]:
            nonlocal stats
            clean = descent.clean is None
            loss, grads, on_trainer_scale = self._amp_ascent_gradient(
                ascent_model, inputs, ascent_inputs, params, num_items_in_batch, sharded_trainable
            )
            if clean:  # right after the clean pass: later passes must not move the running statistics
                descent.clean = on_trainer_scale
                stats = RunningStatsSnapshot(model)
            return loss, grads

        try:
            with (
                deepspeed_engine.deferred_step(engine),  # DeepSpeed steps inside backward: only once θ is back
                perturbed_weights(
                    params, ascent_gradient, self.amp_config, self._amp_saved_buffers(params), world_if_distributed()
                ) as ascent,
                record_function("amp.descent_pass"),
            ):
                descent.ascent = ascent
                with self._amp_swapped_loss(descent):
                    loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            if stats is not None:
                stats.restore()
        self._amp_record(loss, descent)
        return loss

    @contextmanager
    def _amp_swapped_loss(self, descent: _Descent) -> Iterator[None]:
        """In the descent pass, the Trainer's `compute_loss` call returns the clean loss's value with the gradient of
        the loss at θ + Δ.

        The Trainer calls `self.compute_loss` once per `training_step`; for that call an instance attribute wraps
        whatever `compute_loss` this trainer has (a subclass's override included). The tensor it returns carries the
        descent's gradient and the value of the clean loss at θ, both on the Trainer's scale, so whatever the Trainer
        then does with it (divide by the accumulation steps, log it, filter NaN) gives what the plain Trainer would
        have logged. A descent loss that is not finite where the clean one was is never returned: θ is put back and
        the micro-batch's loss is computed again there (counted in `amp_skipped`), from its own copy of the inputs,
        since the first call may have popped `labels` (label smoother, `compute_loss_func`). Under a distributed run
        every process falls back when one does: the same number of `compute_loss` calls (and of whatever collectives
        they run) everywhere.
        """
        compute_loss = self.compute_loss  # bound: the most derived override

        def swapped(*args: Any, **kwargs: Any):
            del self.compute_loss  # one call: the descent pass's
            retry_args = [copy.copy(a) if isinstance(a, Mapping) else a for a in args]  # shallow: tensors shared
            retry_kwargs = {k: copy.copy(v) if isinstance(v, Mapping) else v for k, v in kwargs.items()}
            result = compute_loss(*args, **kwargs)
            returns_outputs = isinstance(result, tuple)
            loss = result[0] if returns_outputs else result
            finite = torch.isfinite(loss.detach()).all() | ~torch.isfinite(descent.clean)  # NaN at θ: Trainer's
            if not bool(on_every_process(finite, descent.ascent.group)):
                descent.fell_back = True
                del result, loss  # the graph at θ + Δ is never back-propagated
                descent.ascent.restore()
                if descent.fsdp_root is not None:
                    reshard(descent.fsdp_root)
                return compute_loss(*retry_args, **retry_kwargs)
            descent.perturbed_loss = loss.detach()
            loss = descent.clean.to(loss.dtype).reshape(loss.shape) + (loss - loss.detach())
            return (loss, *result[1:]) if returns_outputs else loss

        if descent.ascent is not None and not descent.ascent.skipped and descent.clean is not None:
            self.compute_loss = swapped
        try:
            yield
        finally:
            self.__dict__.pop("compute_loss", None)

    def _amp_ascent_gradient(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        ascent_inputs: dict[str, Any],
        params: list[torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None,
        sharded_trainable: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(mean loss, its gradient, the clean loss as the Trainer's `compute_loss` would have returned it).

        `sharded_trainable`, under FSDP2: every trainable parameter as a shard, listed before the forward (after
        it, the root module's registered parameters are its gathered copies, whose `.grad` FSDP2 never fills).

        The ascent's inputs get their own item count n as `num_items_in_batch` (when the Trainer passes a count), so
        a loss normalised by the count is the mean over them, like one that is a mean already. The Trainer's own
        count N (the accumulation window's, over all processes) would give L(N) = L(n) + (∂L/∂n)·(n − n²/N) for a
        loss that is A/n + B in the count, which every loss path of the Trainer is; ∂L/∂n comes from autograd, so
        it is 0 for a loss that ignores the count. With `amp_ascent_fraction` < 1, n and A scale from the head to
        the whole micro-batch: an unbiased estimate of the clean loss. `.grad` is left as it was.
        """
        prepared = self._prepare_inputs(ascent_inputs)  # a fresh shallow copy: compute_loss may pop "labels"
        count = None
        if num_items_in_batch is not None:
            items = self._local_item_count(prepared)
            if items is not None:  # clamped: a micro-batch without items has a mean loss 0, not 0/0
                count = items.clamp(min=1).to(torch.float64 if items.is_floating_point() else torch.float32)
                count.requires_grad_(True)
        with self.compute_loss_context_manager():
            loss = self._amp_ascent_loss(model, prepared, count if count is not None else num_items_in_batch)
        if loss.dim() > 0:  # nn.DataParallel returns one loss per device
            loss = loss.mean()
        scale = self._amp_loss_scale()
        scaled = loss if scale is None else loss * scale
        wrt = [*params, count] if count is not None else params
        if _is_fsdp2(model):
            trainable = [p for p in model.parameters() if p.requires_grad]
            grads = gradient_by_backward(trainable if sharded_trainable is None else sharded_trainable, scaled, wrt)
        elif self._amp_reentrant_checkpointing(model, scaled):
            if deepspeed_engine.engine_of(self.model_wrapped) is not None:
                raise ValueError(_REENTRANT_UNDER_DEEPSPEED)
            grads = gradient_by_backward([p for p in model.parameters() if p.requires_grad], scaled, wrt)
        elif any(is_partitioned(p) for p in params):
            grads = deepspeed_engine.zero3_gradient(deepspeed_engine.engine_of(self.model_wrapped), scaled, wrt)
        else:
            if any(is_sharded(p) for p in params):
                raise ValueError(
                    "AMP found DTensor parameters in a model that is not an FSDP2 module (tensor parallelism?); "
                    "only FSDP2 (`fully_shard`) sharding is supported. Use FSDP2 or DDP."
                )
            grads = torch.autograd.grad(scaled, wrt, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, wrt)]
        if scale is not None:
            torch._foreach_div_(grads, scale)  # an overflow stays inf and is caught as non-finite
        loss = loss.detach()
        on_trainer_scale = loss
        if count is not None:
            d_count = grads.pop()
            whole = self._local_item_count(inputs) if ascent_inputs is not inputs else items  # counted on the device
            n, n_whole = count.detach(), whole.clamp(min=1).to(count.dtype)
            on_trainer_scale = loss + d_count * n * (1 - n_whole / num_items_in_batch)
            factor = self._amp_process_factor()  # the Trainer's compute_loss multiplied the count's loss by it
            loss = loss / factor
            torch._foreach_div_(grads, factor)
        return loss, grads, on_trainer_scale.reshape(())

    def _amp_reentrant_checkpointing(self, model: torch.nn.Module, loss: torch.Tensor) -> bool:
        """Whether `loss`'s graph holds a reentrant `torch.utils.checkpoint` segment (`use_reentrant=True`, the
        default of transformers 4.x), whose backward refuses `torch.autograd.grad`. Read from the graph itself, so it
        holds however checkpointing was turned on (the Trainer's argument, the model's method, a custom module);
        walked once per model and `train()` (a BERT-base graph without checkpoints, ~950 nodes, takes ~1 ms)."""
        if self._amp_reentrant is None or self._amp_reentrant[0] != id(model):
            self._amp_reentrant = (id(model), has_reentrant_checkpoint(loss))
        return self._amp_reentrant[1]

    def _amp_ascent_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        """The ascent's loss: `compute_loss` with the ascent's own item count (see `_amp_ascent_gradient`).

        Subclasses whose `compute_loss` has side effects (TRL's metrics and token counters) undo them here.
        """
        return self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)

    def _amp_process_factor(self) -> int:
        """What `Trainer.compute_loss` multiplies a count-normalised loss by when it averages tokens across devices
        (the process count, so that DDP's gradient averaging leaves a sum over the window's tokens): divided out of
        the ascent, whose mean loss is the process's own. It differs by transformers release (`trainer_versions`)."""
        return trainer_versions.process_factor(self)

    def _amp_loss_scale(self) -> float | None:
        """The fp16 GradScaler's current scale, read without `unscale_` (accelerate unscales once, when clipping), or
        an fp16 DeepSpeed engine's."""
        engine = deepspeed_engine.engine_of(self.model_wrapped)
        if engine is not None:
            return deepspeed_engine.loss_scale(engine)
        return grad_scaler_scale(self.accelerator)

    def _local_item_count(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        """Items of this micro-batch, counted as `Trainer._get_num_items_in_batch` counts them (which labels it counts
        depends on the transformers release: `trainer_versions`), without a gather."""
        labels = trainer_versions.counted_labels(self, inputs)
        if not torch.is_tensor(labels):
            return None
        return labels.ne(-100).sum().to(self.args.device)

    # ---------------------------------------------------------------------------------------------------- logging
    def _amp_record(self, loss: torch.Tensor, descent: _Descent) -> None:
        window = self._amp_window
        if window.last_step != self.state.global_step:
            window.last_step = self.state.global_step
            window.steps += 1
        ascent = descent.ascent
        clean = descent.clean
        if descent.perturbed_loss is not None and clean is not None:
            # the Trainer scaled the clean value it got into `loss`: the same factor puts θ + Δ's loss on its scale
            factor = torch.where(
                clean != 0, loss.detach().double() / clean.double(), torch.ones((), dtype=torch.double)
            )
            perturbed = descent.perturbed_loss.double().reshape(()) * factor
        else:
            perturbed = loss.detach().double()  # trained at θ: the loss there is the loss the gradient was taken at
        # as the Trainer's NaN filter keeps a non-finite micro-batch out of `loss`, keep it out of `amp_loss`
        window.loss_sum = window.loss_sum + torch.nan_to_num(perturbed.sum(), nan=0.0, posinf=0.0, neginf=0.0)
        if descent.fell_back and not self._amp_warned_descent:
            self._amp_warned_descent = True
            logger.warning(
                "AMP: the loss at θ + Δ was not finite where the loss at θ was (step %d); that micro-batch was "
                "trained at θ and is counted in amp_skipped. A smaller amp_epsilon avoids it. (Warned once.)",
                self.state.global_step,
            )
        if ascent is None or ascent.skipped or descent.fell_back:
            window.skipped += 1
        elif ascent.delta_norm is not None:
            window.delta_sum = window.delta_sum + ascent.delta_norm.double()
            window.perturbed += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds `amp_loss`, `amp_delta_norm`, `amp_skipped` and `amp_steps` to every training log (the logs with
        `loss`). In a window without AMP steps, `amp_loss` is `loss` (the gradient was taken at θ) and the others 0."""
        if "loss" in logs and self.amp_config.enabled:
            # One reduction per log, on every process (all of them log together), like the Trainer's own `loss`.
            window, self._amp_window = self._amp_window, _MetricsWindow()
            device = self.args.device
            counts = torch.tensor([window.steps, window.perturbed, window.skipped], dtype=torch.float64, device=device)
            # each sum is a device tensor, or still the float 0.0 when nothing was added: bring both to one device
            sums = torch.stack(
                [torch.as_tensor(x, dtype=torch.float64, device=device) for x in (window.loss_sum, window.delta_sum)]
            )
            totals = self.accelerator.reduce(torch.cat([sums, counts]), reduction="sum").tolist()
            loss_sum, delta_sum, steps, perturbed, skipped = totals
            processes = max(1, self.accelerator.num_processes)
            # with the precision of the Trainer's own `loss` (4.x rounds it): the two keys compare as equals
            logs["amp_loss"] = trainer_versions.as_logged(loss_sum / steps) if steps > 0 else logs["loss"]
            logs["amp_delta_norm"] = delta_sum / perturbed if perturbed > 0 else 0.0
            logs["amp_skipped"] = int(skipped)
            logs["amp_steps"] = round(steps / processes)
        super().log(logs, *args, **kwargs)


@dataclass
class _Descent:
    """What the descent pass of one AMP micro-batch needs from the ascent, and what it reports back."""

    ascent: AscentResult | None = None
    clean: torch.Tensor | None = None
    """The clean loss at θ as the Trainer's `compute_loss` would have returned it (before its accumulation scaling)."""
    perturbed_loss: torch.Tensor | None = None
    """The descent's own loss at θ + Δ, on the same scale as `clean`."""
    fell_back: bool = False
    """The loss at θ + Δ was not finite: the micro-batch was trained at θ."""
    fsdp_root: torch.nn.Module | None = None
    """The FSDP2 root module, whose all-gathered weights outlive its forward: resharded before a forward at θ."""


@dataclass
class _MetricsWindow:
    """AMP metrics since the last log. Sums of device values stay on the device (no host sync per step); counts the
    host already knows are plain integers."""

    loss_sum: torch.Tensor | float = 0.0
    """Sum of the descent passes' losses, on the Trainer's scale (so per step it sums to a step's loss)."""
    delta_sum: torch.Tensor | float = 0.0
    steps: int = 0
    """Optimizer steps with AMP: `amp_loss` is averaged over these, as `loss` is over all steps."""
    perturbed: int = 0
    skipped: int = 0
    last_step: int | None = None


class AMPTrainer(AMPMixin, Trainer):
    """`transformers.Trainer` with Adversarial Model Perturbation. Same constructor; AMP settings come from `args`."""


class AMPSeq2SeqTrainer(AMPMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with Adversarial Model Perturbation."""
