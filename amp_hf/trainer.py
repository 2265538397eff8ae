"""Trainer glue: run the AMP step of `perturbation.py` inside the Hugging Face Trainer's own training step.

Per micro-batch, on an AMP step:
  1. ascent passes (clean + K − 1): `compute_loss` as the Trainer calls it, but with the micro-batch's own item count
     as `num_items_in_batch` (when the Trainer passes a count at all), so every loss path (a model honouring the count
     or ignoring it, a `compute_loss_func` dividing by it, the label smoother) gives the micro-batch's **mean** loss.
     Its gradient comes from `torch.autograd.grad` on the model without its DDP wrapper, unscaled by the fp16
     GradScaler's scale: nothing is written to `.grad` and nothing is communicated, whatever the accumulation or the
     process count. With `amp_ascent_fraction` < 1 these passes see the head of the micro-batch only (`batch.py`).
  2. descent pass at θ + Δ: `Trainer.training_step` itself, so loss scaling, the label smoother, `compute_loss_func`,
     custom `compute_loss` overrides, accumulation and DDP gradient sync behave exactly as in the plain Trainer. A
     descent loss that is not finite is never back-propagated: the micro-batch is retrained at θ instead.
  3. θ is copied back (also on error) and running statistics are put back to their post-clean-pass values.

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
`sync_each_batch`), so no unsharded gradient accumulates outside FSDP's sharded `.grad`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
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

from . import deepspeed_engine, selection, trainer_versions
from .batch import head_of_batch
from .config import AMPConfig
from .perturbation import AscentResult, on_every_process, perturbed_weights, save_buffers
from .running_stats import RunningStatsSnapshot
from .sharding import is_partitioned, is_sharded, layout

logger = logging.getLogger(__name__)

METRIC_KEYS = ("amp_loss", "amp_delta_norm", "amp_skipped", "amp_steps")

STEPS_IN_BACKWARD = ("lomo", "adalomo", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise")
STEPS_IN_BACKWARD += ("galore_adafactor_layerwise", "apollo_adamw_layerwise")
"""`optim` values whose optimizer updates the weights during `backward`: under AMP it would step at θ + Δ."""


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
        self._amp_saved: tuple[list[tuple], list[torch.Tensor]] | None = None
        self._amp_window = _MetricsWindow()
        self._amp_announced = False
        self._amp_warned_descent = False

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
        # Arguments may have been edited since construction (or by a hyper-parameter search trial): validate again
        # before any training starts.
        self.amp_config = self._read_amp_config()
        self._amp_candidates = None
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
        key = [(id(p), t.shape, t.dtype, t.device) for p, t in zip(params, layout(params).local)]
        if self._amp_saved is None or self._amp_saved[0] != key:
            self._amp_saved = None  # free the old buffers before allocating new ones
            self._amp_saved = (key, save_buffers(params))
        return self._amp_saved[1]

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
        params = [p for _, p in self.amp_parameters(model)]
        if not params:
            return super().training_step(model, inputs, num_items_in_batch)

        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()  # schedule-free optimizers swap their weights in here: do it before the ascent
        engine = deepspeed_engine.engine_of(model)
        ascent_model = engine.module if engine is not None else _without_ddp(model)
        if _is_fsdp2(ascent_model):
            # Every pass of an AMP micro-batch reduce-scatters: the ascent must (its gradient arrives no other way),
            # and then the descent does too, accumulating into the sharded `.grad` instead of an unsharded buffer
            # that the ascent's reduce-scatter would otherwise carry along. The Trainer's `no_sync` turns sync on again
            # when it exits, as it always does.
            ascent_model.set_requires_gradient_sync(True)
        ascent_inputs = head_of_batch(inputs, self.amp_config.ascent_fraction)
        descent = _Descent()
        stats: RunningStatsSnapshot | None = None

        def ascent_gradient() -> tuple[torch.Tensor, list[torch.Tensor]]:
            nonlocal stats
            clean = descent.clean is None
            loss, grads, on_trainer_scale = self._amp_ascent_gradient(
                ascent_model, inputs, ascent_inputs, params, num_items_in_batch
            )
            if clean:  # right after the clean pass: later passes must not move the running statistics
                descent.clean = on_trainer_scale
                stats = RunningStatsSnapshot(model)
            return loss, grads

        try:
            with (
                deepspeed_engine.deferred_step(engine),  # DeepSpeed steps inside backward: only once θ is back
                perturbed_weights(params, ascent_gradient, self.amp_config, self._amp_saved_buffers(params)) as ascent,
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
        the micro-batch's loss is computed again there (counted in `amp_skipped`).
        """
        compute_loss = self.compute_loss  # bound: the most derived override

        def swapped(*args: Any, **kwargs: Any):
            del self.compute_loss  # one call: the descent pass's
            result = compute_loss(*args, **kwargs)
            returns_outputs = isinstance(result, tuple)
            loss = result[0] if returns_outputs else result
            finite = torch.isfinite(loss.detach()).all() | ~torch.isfinite(descent.clean)  # NaN at θ: Trainer's
            if not bool(on_every_process(finite, descent.ascent.group)):
                descent.fell_back = True
                descent.ascent.restore()
                return compute_loss(*args, **kwargs)
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
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(mean loss, its gradient, the clean loss as the Trainer's `compute_loss` would have returned it).

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
            grads = _fsdp_gradient(model, scaled, wrt)
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
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return None
        return float(scaler.get_scale())

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
