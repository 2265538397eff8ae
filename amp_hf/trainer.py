"""Trainer glue: run the AMP step of `perturbation.py` inside the Hugging Face Trainer's own training step.

Per micro-batch, on an AMP step:
  1. ascent passes (clean + K − 1): the micro-batch's own **mean** loss (`num_items_in_batch=None`), gradient by
     `torch.autograd.grad` on the model without its DDP wrapper, unscaled by the fp16 GradScaler's scale. Nothing is
     written to `.grad` and nothing is communicated, whatever the accumulation, token normalisation or process count.
  2. descent pass at θ + Δ: `Trainer.training_step` itself, so loss scaling, the label smoother, `compute_loss_func`,
     custom `compute_loss` overrides, accumulation and DDP gradient sync behave exactly as in the plain Trainer.
  3. θ is copied back (also on error), running statistics are put back to their post-clean-pass values, and the
     clean loss is returned on the plain Trainer's scale, so `loss` curves of ERM and AMP runs compare.

FSDP2 (`fully_shard`) differs in step 1, by necessity: each process holds only shards, the forward runs on
all-gathered copies that are not the parameters autograd can differentiate to, and a gradient reaches the shards only
through FSDP's reduce-scatter, which averages it over the processes. A per-process Δ would need a full-size Δ on each
process, which is what sharding avoids. So under FSDP2 the ascent gradient is the **average over the processes** of
each process's micro-batch mean-loss gradient, taken by a real backward with every `.grad` moved aside and put back,
and each process perturbs its shards with whole-tensor norms (`perturbation.py`). With equal micro-batches that is
one process running AMP on the concatenation of all processes' micro-batches. AMP micro-batches reduce-scatter on
every pass (the ascent needs it; the descent then accumulates into the sharded `.grad`, as with accelerate's
`sync_each_batch`), so no unsharded gradient accumulates outside FSDP's sharded `.grad`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from transformers import Seq2SeqTrainer, Trainer

try:  # public since torch 2.6; builds without distributed support have no FSDP2
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
except ImportError:  # pragma: no cover - depends on the torch build
    CPUOffloadPolicy = FSDPModule = None

from .config import AMPConfig
from .perturbation import AscentResult, is_sharded, perturbed_weights, save_buffers
from .running_stats import RunningStatsSnapshot

logger = logging.getLogger(__name__)

METRIC_KEYS = ("amp_loss", "amp_delta_norm", "amp_skipped")


class AMPMixin:
    """Adds Adversarial Model Perturbation to a `Trainer` subclass: `class X(AMPMixin, SomeTrainer)`.

    The AMP settings come from the `amp_*` fields of `args` (see `AMPTrainingArguments`); a plain `TrainingArguments`
    gets the reference defaults. Everything but `training_step` and `log` is the wrapped Trainer's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.amp_config = self._read_amp_config(announce_defaults=True)
        self._amp_parameters_cache: tuple[int, list[tuple[str, torch.nn.Parameter]]] | None = None
        self._amp_saved: tuple[list[tuple], list[torch.Tensor]] | None = None
        self._amp_window = _MetricsWindow()

    # ----------------------------------------------------------------------------------------------- configuration
    def _read_amp_config(self, announce_defaults: bool = False) -> AMPConfig:
        """The validated settings of `self.args`; refuses the back-ends AMP cannot run on correctly."""
        config = AMPConfig.from_args(self.args)
        missing = AMPConfig.missing_from(self.args)
        if missing and config.enabled and announce_defaults:
            logger.warning(
                "%s got %s without the AMP fields (%s); using the AMP defaults %s. Use AMPTrainingArguments (or "
                "AMPArgumentsMixin) to set them.",
                type(self).__name__,
                type(self.args).__name__,
                ", ".join(missing),
                config,
            )
        if config.enabled and getattr(self, "is_deepspeed_enabled", False):
            raise ValueError(
                "AMPTrainer does not support DeepSpeed: its engine steps the optimizer inside backward and keeps "
                "gradients in its own partitioned buffers, so the perturbed weights could be stepped. Run with DDP "
                "(`accelerate launch --multi_gpu`), or FSDP2 to shard a large model (examples/accelerate/"
                "fsdp_gpu.yaml), instead, or set amp_inner_steps=0 / amp_epsilon=0 for plain training."
            )
        if config.enabled and getattr(self, "is_fsdp_enabled", False):
            self._check_fsdp_plugin()
        return config

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
        # Arguments may have been edited since construction: validate again before any training starts.
        self.amp_config = self._read_amp_config()
        self._amp_parameters_cache = None
        self._amp_window = _MetricsWindow()
        try:
            return super().train(*args, **kwargs)
        finally:
            self._amp_saved = None  # θ's buffers live from the first AMP step to the end of training

    def _amp_saved_buffers(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Where θ is kept during each AMP step: allocated once, reused every step (see `save_buffers`)."""
        key = [(id(p), p.shape, p.dtype, p.device) for p in params]
        if self._amp_saved is None or self._amp_saved[0] != key:
            self._amp_saved = None  # free the old buffers before allocating new ones
            self._amp_saved = (key, save_buffers(params))
        return self._amp_saved[1]

    def amp_parameters(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of every tensor AMP perturbs: trainable, and not matched by `amp_exclude`.

        Names are those of the model itself, without the `module.` / `_orig_mod.` prefixes of DDP and torch.compile,
        so `amp_exclude` patterns read the same however the run is launched.
        """
        # Keyed by the model as passed: unwrapping it costs ~0.1 ms, as much as the rest of AMP's per-step glue.
        if self._amp_parameters_cache is None or self._amp_parameters_cache[0] != id(model):
            unwrapped = self.accelerator.unwrap_model(model, keep_torch_compile=False)
            selected = [
                (name, p)
                for name, p in unwrapped.named_parameters()
                if p.requires_grad and not self.amp_config.is_excluded(name)
            ]
            self._amp_parameters_cache = (id(model), selected)
        return self._amp_parameters_cache[1]

    # -------------------------------------------------------------------------------------------------- the step
    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        if not self.amp_config.applies_at(self.state.global_step):
            return super().training_step(model, inputs, num_items_in_batch)
        params = [p for _, p in self.amp_parameters(model)]
        if not params:
            return super().training_step(model, inputs, num_items_in_batch)

        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()  # schedule-free optimizers swap their weights in here: do it before the ascent
        ascent_model = _without_ddp(model)
        if _is_fsdp2(ascent_model):
            # Every pass of an AMP micro-batch reduce-scatters: the ascent must (its gradient arrives no other way),
            # and then the descent does too, accumulating into the sharded `.grad` instead of an unsharded buffer
            # that the ascent's reduce-scatter would otherwise carry along. The Trainer's `no_sync` turns sync on again
            # when it exits, as it always does.
            ascent_model.set_requires_gradient_sync(True)
        stats: RunningStatsSnapshot | None = None

        def ascent_gradient() -> tuple[torch.Tensor, list[torch.Tensor]]:
            nonlocal stats
            loss, grads = self._amp_ascent_gradient(ascent_model, inputs, params)
            if stats is None:  # right after the clean pass: later passes must not move the running statistics
                stats = RunningStatsSnapshot(model)
            return loss, grads

        try:
            with (
                perturbed_weights(params, ascent_gradient, self.amp_config, self._amp_saved_buffers(params)) as ascent,
                record_function("amp.descent_pass"),
            ):
                amp_loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            if stats is not None:
                stats.restore()
        self._amp_record(amp_loss, ascent)
        return self._on_trainer_scale(ascent.clean_loss, inputs, num_items_in_batch)

    def _amp_ascent_gradient(
        self, model: torch.nn.Module, inputs: dict[str, Any], params: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean loss of the micro-batch at the current weights, and its gradient; `.grad` is left as it was.

        Under FSDP2 the gradient is FSDP's: sharded, and averaged over the processes (`_fsdp_gradient`).
        """
        inputs = self._prepare_inputs(inputs)  # a fresh shallow copy: compute_loss may pop "labels"
        with self.compute_loss_context_manager():
            loss = self._amp_ascent_loss(model, inputs)
        if loss.dim() > 0:  # nn.DataParallel returns one loss per device
            loss = loss.mean()
        scale = self._amp_loss_scale()
        scaled = loss if scale is None else loss * scale
        if _is_fsdp2(model):
            grads = _fsdp_gradient(model, scaled, params)
        else:
            if any(is_sharded(p) for p in params):
                raise ValueError(
                    "AMP found DTensor parameters in a model that is not an FSDP2 module (tensor parallelism?); "
                    "only FSDP2 (`fully_shard`) sharding is supported. Use FSDP2 or DDP."
                )
            grads = torch.autograd.grad(scaled, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        if scale is not None:
            torch._foreach_div_(grads, scale)  # an overflow stays inf and is caught as non-finite
        return loss.detach(), grads

    def _amp_ascent_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The micro-batch's own mean loss: `compute_loss` without `num_items_in_batch`.

        Subclasses whose `compute_loss` has side effects (TRL's metrics and token counters) undo them here.
        """
        return self.compute_loss(model, inputs, num_items_in_batch=None)

    def _amp_loss_scale(self) -> float | None:
        """The fp16 GradScaler's current scale, read without `unscale_` (accelerate unscales once, when clipping)."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return None
        return float(scaler.get_scale())

    def _on_trainer_scale(
        self, mean_loss: torch.Tensor, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        """Turns the micro-batch's mean loss into what `Trainer.training_step` would have returned for it."""
        loss = mean_loss
        token_normalised = num_items_in_batch is not None and (
            self.model_accepts_loss_kwargs or self.compute_loss_func is not None
        )
        if token_normalised:
            # The Trainer's loss is (sum over this micro-batch) / (items in the whole window), times the number of
            # processes when it averages tokens across devices; the mean loss times the local item count is the sum.
            local_items = self._local_item_count(inputs)
            if local_items is not None:
                loss = loss * local_items / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    tp_size = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
                    loss = loss * (self.accelerator.num_processes // tp_size)
        scaled_for_ga = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else token_normalised
        if not scaled_for_ga:
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    def _local_item_count(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        """Items of this micro-batch, counted as `Trainer._get_num_items_in_batch` counts them, without a gather."""
        if "shift_labels" in inputs:
            labels = inputs["shift_labels"]
        elif "labels" in inputs:
            labels = inputs["labels"][..., 1:] if getattr(self, "_loss_shifts_labels", False) else inputs["labels"]
        else:
            return None
        if not torch.is_tensor(labels):
            return None
        return labels.ne(-100).sum().to(self.args.device)

    # ---------------------------------------------------------------------------------------------------- logging
    def _amp_record(self, amp_loss: torch.Tensor, ascent: AscentResult) -> None:
        window = self._amp_window
        if window.last_step != self.state.global_step:
            window.last_step = self.state.global_step
            window.steps += 1
        window.loss_sum = window.loss_sum + amp_loss.detach().double().sum()
        if ascent.skipped:
            window.skipped += 1
        elif ascent.delta_norm is not None:
            window.delta_sum = window.delta_sum + ascent.delta_norm.double()
            window.perturbed += 1

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds `amp_loss`, `amp_delta_norm` and `amp_skipped` to the training logs, averaged like `loss`."""
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
            if steps > 0:
                logs["amp_loss"] = loss_sum / steps
                logs["amp_delta_norm"] = delta_sum / perturbed if perturbed > 0 else 0.0
                logs["amp_skipped"] = int(skipped)
        super().log(logs, *args, **kwargs)


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


def _without_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper: its forward runs no buffer broadcast and arms no gradient all-reduce."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _is_fsdp2(model: torch.nn.Module) -> bool:
    return FSDPModule is not None and isinstance(model, FSDPModule)


def _fsdp_gradient(model: torch.nn.Module, loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """∇loss for FSDP2's sharded `params`, averaged over the processes, leaving every `.grad` as it was.

    `torch.autograd.grad` cannot be used: the forward ran on all-gathered copies, so the sharded parameters are not in
    the graph (it would report them unused, and zeros would perturb nothing). The gradient reaches the shards only
    through FSDP's post-backward reduce-scatter into `.grad`. So: move every trainable parameter's `.grad` (the
    micro-batches accumulated so far) aside, run a real backward, take the fresh sharded gradients and put the old
    `.grad` back: a swap of references, no copy.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    kept = [p.grad for p in trainable]
    for p in trainable:
        p.grad = None
    try:
        loss.backward()
        fresh = [p.grad for p in params]
    finally:
        for p, grad in zip(trainable, kept):
            p.grad = grad
    return fresh


class AMPTrainer(AMPMixin, Trainer):
    """`transformers.Trainer` with Adversarial Model Perturbation. Same constructor; AMP settings come from `args`."""


class AMPSeq2SeqTrainer(AMPMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with Adversarial Model Perturbation."""
