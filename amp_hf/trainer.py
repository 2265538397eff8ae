"""Trainer glue: run one AMP micro-batch (`micro_batch.py`, shared with the custom-loop API) inside the Hugging Face
Trainer's own training step. This module says only what the Trainer supplies: its loss path, its item count, its
step count, its logging and its refusals.

Per micro-batch, on an AMP step:
  1. ascent passes (clean + K − 1): `compute_loss` as the Trainer calls it, but with the micro-batch's own item count
     as `num_items_in_batch` (when the Trainer passes a count at all), so every loss path (a model honouring the count
     or ignoring it, a `compute_loss_func` dividing by it, the label smoother) gives the micro-batch's **mean** loss,
     on the model inside its DDP / compile / DeepSpeed wrappers. With `amp_ascent_fraction` < 1 these passes see the
     head of the micro-batch only (`batch.py`).
  2. descent pass at θ + Δ: `Trainer.training_step` itself, so loss scaling, the label smoother, `compute_loss_func`,
     custom `compute_loss` overrides, accumulation and DDP gradient sync behave exactly as in the plain Trainer, and
     the logged `loss` is the Trainer's own number for it. A descent loss that is not finite is never
     back-propagated: the micro-batch is retrained at θ instead, from its own copy of the inputs, decided by every
     process together (a process deciding alone would call `compute_loss`, and its collectives, a different number
     of times).
  3. θ is copied back (also on error); running statistics are updated once, by the clean pass at θ (`running_stats.py`).

FSDP2 (`fully_shard`) and ZeRO-3 differ in step 1, by necessity: the ascent gradient is the **average over the
processes** of each process's micro-batch mean-loss gradient, and each process perturbs its shards with whole-tensor
norms (docs/distributed.md, `micro_batch.py`, `sharding.py`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch.profiler import record_function
from transformers import Seq2SeqTrainer, Trainer

from . import deepspeed_engine, trainer_versions
from .config import AMPConfig
from .first_moment import first_moment_problem, refusal, warn_if_radius_misfits
from .micro_batch import REENTRANT_UNDER_DEEPSPEED, MicroBatchAMP, announce, warn_if_defaults_misfit
from .perturbation import AscentResult, on_every_process
from .sharding import fsdp_plugin_problem
from .wrapped_models import grad_scaler_scale, unwrapped

logger = logging.getLogger(__name__)

COMPARE_RUN = "AMP_HF_COMPARE_RUN"
"""Set by amp_hf.compare in the environment of each run it starts (the run's folder). Only then is the compare package
imported, to add its recorder (`amp_hf.compare.recording`): a plain `import amp_hf` does not load it."""

STEPS_IN_BACKWARD = ("lomo", "adalomo", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise")
STEPS_IN_BACKWARD += ("galore_adafactor_layerwise", "apollo_adamw_layerwise")
"""`optim` values whose optimizer updates the weights during `backward`: under AMP it would step at θ + Δ (refused by
name before training; any other optimizer stepping in backward is refused at its first step, `micro_batch.py`)."""


MOMENTUM_UNDER_DEEPSPEED = (
    "AMPTrainer does not support amp_direction='momentum' under DeepSpeed: ZeRO keeps the optimizer's first moment "
    "in the engine's own flat partitions (fp32, split over the processes, not per parameter in optimizer.state), so "
    "the direction cannot be read per parameter. Use amp_direction='gradient' under DeepSpeed, or DDP / FSDP2 "
    "(fsdp_config {'version': 2}) for the momentum direction, or set amp_inner_steps=0 / amp_epsilon=0 for plain "
    "training."
)


class AMPMixin:
    """Adds Adversarial Model Perturbation to a `Trainer` subclass: `class X(AMPMixin, SomeTrainer)`.

    The AMP settings come from the `amp_*` fields of `args` (see `AMPTrainingArguments`); a plain `TrainingArguments`
    gets the reference defaults. Everything but `training_step` and `log` is the wrapped Trainer's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.amp_config = self._read_amp_config(announce_defaults=True)
        self._amp = MicroBatchAMP(self.amp_config)
        self._amp_announced = False
        if os.environ.get(COMPARE_RUN):  # amp_hf.compare started this run: record what it reads
            from .compare.recording import add_comparison_recorder

            add_comparison_recorder(self)

    # ----------------------------------------------------------------------------------------------- configuration
    def _read_amp_config(self, announce_defaults: bool = False) -> AMPConfig:
        """The validated settings of `self.args`; refuses the back-ends AMP cannot run on correctly."""
        config = AMPConfig.from_args(self.args)
        missing = AMPConfig.missing_from(self.args)
        if missing and config.enabled and announce_defaults:
            logger.warning(
                "%s got %s without the AMP fields (%s), so the reference defaults apply: %s. Those are the paper's "
                "settings for CNNs trained with SGD; on vision transformers trained with AdamW they diverge and they "
                "wreck the fine-tuning of pretrained models (docs/arguments.md, 'Choosing ε by hand'). Use "
                "AMPTrainingArguments (or AMPArgumentsMixin) to set them.",
                type(self).__name__,
                type(self.args).__name__,
                ", ".join(missing),
                config,
            )
        if not config.enabled:
            return config
        if getattr(self, "is_deepspeed_enabled", False):
            deepspeed_engine.check_supported(self.accelerator)
            if config.direction == "momentum":
                raise ValueError(MOMENTUM_UNDER_DEEPSPEED)
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
            problem = fsdp_plugin_problem(self.accelerator)
            if problem is not None:
                raise ValueError(
                    f"AMPTrainer does not support {problem}. Use FSDP2 without offload (fsdp_config {{'version': 2}}, "
                    "or `fsdp_version: 2` in the accelerate config, as in examples/accelerate/fsdp_gpu.yaml) or DDP, "
                    "or set amp_inner_steps=0 / amp_epsilon=0 for plain training."
                )
        self._check_supported_features()
        return config

    def _check_supported_features(self) -> None:
        """Refuses the Trainer features AMP cannot run correctly, naming the field, before anything trains."""
        args = self.args
        parallelism = getattr(args, "parallelism_config", None) or getattr(self.accelerator, "parallelism_config", None)
        tp_size = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
        tp_size = max(tp_size, getattr(parallelism, "tp_size", None) or 1)
        sliced = "each process holds a slice of every sequence, so its loss and gradient are not a micro-batch's and "
        sliced += "the perturbation would differ between the slices"
        refusals = [  # (refused, what, why, what to do instead)
            (getattr(args, "n_gpu", 1) > 1, f"nn.DataParallel (n_gpu={args.n_gpu}: several GPUs seen by one process "
             "that was not launched as a distributed run)", "the Trainer splits each micro-batch over the GPUs inside "
             "one forward, so the ascent's loss and its item count are not one micro-batch's, and every ascent pass "
             "would replicate the model", "Launch one process per GPU (torchrun --nproc_per_node N, or accelerate "
             "launch), which is DDP, or make one GPU visible (CUDA_VISIBLE_DEVICES=0)"),
            *(((getattr(parallelism, name, None) or 1) > 1, f"{kind} (parallelism_config.{name}="
               f"{getattr(parallelism, name, None)}; allowed: 1)", sliced, "Use data parallelism (DDP or FSDP2) with "
               "parallelism_config.cp_size = sp_size = 1")
              for name, kind in (("cp_size", "context parallelism"), ("sp_size", "sequence parallelism"))),
            (tp_size > 1, f"tensor parallelism (tensor-parallel size {tp_size}: the model's tp_plan / tp_size, "
             "parallelism_config.tp_size or DeepSpeed's tensor_parallel.autotp_size; allowed: 1)", "each process "
             "holds a slice of the weight tensors, and the norms of the ball would be those of the slices",
             "Load the model without tp_plan and use DDP or FSDP2"),
            (getattr(args, "half_precision_backend", None) == "apex", "half_precision_backend='apex'", "apex scales "
             "the loss inside its own backward, so the ascent gradient would not be unscaled and overflows would not "
             "be caught the way they are for the GradScaler", "Use half_precision_backend='auto' (torch.amp: fp16 "
             "with the GradScaler, or bf16)"),
            (getattr(args, "past_index", -1) >= 0, f"past_index={getattr(args, 'past_index', -1)} (allowed: -1)",
             "the Trainer keeps the model's memory output (`_past`) from each forward and feeds it to the next, so "
             "the ascent passes would advance it too", "Train without past_index"),
        ]  # fmt: skip
        for refused, what, why, instead in refusals:
            if refused:
                raise ValueError(
                    f"AMPTrainer does not support {what}: {why}. {instead}, or set amp_inner_steps=0 / "
                    "amp_epsilon=0 for plain training."
                )
        kwargs = getattr(args, "gradient_checkpointing_kwargs", None) or {}
        if getattr(self, "is_deepspeed_enabled", False) and args.gradient_checkpointing and kwargs.get("use_reentrant"):
            raise ValueError(REENTRANT_UNDER_DEEPSPEED)

    def train(self, *args: Any, **kwargs: Any):
        # Arguments may have been edited since construction (or by a hyper-parameter search trial): validate again
        # before any training starts.
        self.amp_config = self._read_amp_config()
        self._amp = MicroBatchAMP(self.amp_config)  # a fresh window and caches (checkpointing may have changed)
        self._amp_announced = False
        try:
            return super().train(*args, **kwargs)
        finally:
            self._amp.release()  # θ's buffers live from the first AMP step to the end of training

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
        self._amp = MicroBatchAMP(self.amp_config)

    # ------------------------------------------------------------------------------------ what AMP perturbs
    def amp_parameters(self, model: torch.nn.Module | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of every tensor AMP perturbs now: trainable (read on every call, for unfreezing recipes),
        selected by `amp_include` / `amp_exclude` on the model's own names (no DDP or torch.compile prefixes)."""
        return self._amp.parameters(self.model if model is None else model)

    def amp_parameter_names(self, model: torch.nn.Module | None = None) -> list[str]:
        """The names of the parameters AMP perturbs now (the model's own names, which the patterns are matched to)."""
        return [name for name, _ in self.amp_parameters(model)]

    def _amp_announce(self, model: torch.nn.Module) -> None:
        """The start-up line (what AMP perturbs and the settings, or that AMP is off), on the main process, and the
        warnings for the reference defaults on a pretrained model or with an Adam-family optimizer and for a momentum
        radius known to wreck AdamW training; before the first step, the refusal of an optimizer the momentum
        direction cannot read."""
        self._amp_announced = True
        if self.amp_config.enabled and self.amp_config.direction == "momentum":  # every process: none trains on
            problem = first_moment_problem(self.optimizer)
            if problem is not None:
                raise ValueError(refusal(problem))
        if not self.is_world_process_zero():
            return
        announce(unwrapped(model), self.amp_config)
        warn_if_radius_misfits(self.amp_config, self.optimizer)
        args = self.args
        if self.amp_config.enabled and not getattr(args, "amp_given", ()) and getattr(args, "amp_preset", None) is None:
            warn_if_defaults_misfit(unwrapped(model), self.optimizer)

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
        if self.amp_config.direction == "gradient":  # the ascent runs the model before the Trainer's step sets this
            model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()  # schedule-free optimizers swap their weights in here: do it before the ascent
        engine = deepspeed_engine.engine_of(model)
        if self.amp_config.direction == "momentum":  # no ascent pass to scale (and on a GPU, reading the scale syncs)
            scale = None
        else:
            scale = deepspeed_engine.loss_scale(engine) if engine is not None else grad_scaler_scale(self.accelerator)

        def mean_loss(module: torch.nn.Module, head: dict[str, Any]) -> torch.Tensor:
            return self._amp_mean_loss(module, head, num_items_in_batch)

        with (
            deepspeed_engine.deferred_step(engine),  # DeepSpeed steps inside backward: only once θ is back
            self._amp.perturbed(model, inputs, mean_loss, scale, engine, self.optimizer) as ascent,
            record_function("amp.descent_pass"),
            self._amp_guarded_descent(ascent),
        ):
            loss = super().training_step(model, inputs, num_items_in_batch)
            fell_back = self._amp.fell_back
        self._amp.window.add(ascent, self.state.global_step, fell_back)
        return loss

    def _amp_mean_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        """The micro-batch's mean loss for the ascent: `compute_loss` with the micro-batch's own item count n as
        `num_items_in_batch` (when the Trainer passes a count), so a loss normalised by the count is the mean over
        its items, like one that is a mean already, and ζ keeps its meaning whatever the loss path; the Trainer's
        process factor is divided out again."""
        prepared = self._prepare_inputs(inputs)  # a fresh shallow copy per pass: compute_loss may pop "labels"
        count, factor = num_items_in_batch, 1
        if num_items_in_batch is not None:
            items = self._local_item_count(prepared)
            if items is not None:  # clamped: a micro-batch without items has a mean loss 0, not 0/0
                count, factor = items.clamp(min=1), trainer_versions.process_factor(self)
        with self.compute_loss_context_manager():
            loss = self._amp_ascent_loss(model, prepared, count)
        return loss / factor if factor != 1 else loss

    def _amp_ascent_loss(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        """One ascent pass's `compute_loss`. Subclasses whose `compute_loss` has side effects (TRL's metrics and
        token counters) undo them here: the descent pass, `Trainer.training_step` itself, records them."""
        return self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)

    @contextmanager
    def _amp_guarded_descent(self, ascent: AscentResult) -> Iterator[None]:
        """A descent loss at θ + Δ that is not finite is never back-propagated: θ is put back and the loss computed
        again there, from its own copy of the inputs (the first call may have popped `labels`), agreed over the
        processes. For the Trainer's one `self.compute_loss` call, an instance attribute wraps the most derived one."""
        compute_loss = self.compute_loss  # bound: the most derived override

        def guarded(*args: Any, **kwargs: Any):
            del self.compute_loss  # one call: the descent pass's
            retry_args = [copy.copy(a) if isinstance(a, Mapping) else a for a in args]  # shallow: tensors shared
            retry_kwargs = {k: copy.copy(v) if isinstance(v, Mapping) else v for k, v in kwargs.items()}
            result = compute_loss(*args, **kwargs)
            loss = result[0] if isinstance(result, tuple) else result
            if bool(on_every_process(torch.isfinite(loss.detach()).all(), ascent.group)):
                return result
            del result, loss  # the graph at θ + Δ is never back-propagated
            self._amp.fall_back()
            result = compute_loss(*retry_args, **retry_kwargs)
            self._amp.fell_back_from(result[0] if isinstance(result, tuple) else result)
            return result

        if ascent.moved and not ascent.skipped:  # the weights are at θ + Δ
            self.compute_loss = guarded
        try:
            yield
        finally:
            self.__dict__.pop("compute_loss", None)

    def _local_item_count(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        """Items of this micro-batch, counted as `Trainer._get_num_items_in_batch` counts them (which labels it counts
        depends on the transformers release: `trainer_versions`), without a gather."""
        labels = trainer_versions.counted_labels(self, inputs)
        if not torch.is_tensor(labels):
            return None
        return labels.ne(-100).sum().to(self.args.device)

    # ---------------------------------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds `micro_batch.METRIC_NAMES` to every training log (docs/arguments.md): `loss` stays the Trainer's
        own number; one reduction per log, on every process, like `loss`'s."""
        if "loss" in logs and self.amp_config.enabled:
            reduce = lambda t: self.accelerator.reduce(t, reduction="sum")  # noqa: E731
            logs.update(self._amp.take_metrics(self.args.device, reduce, self.accelerator.num_processes, logs["loss"]))
            if "amp_clean_loss" in logs:  # not for the momentum direction, which has no clean pass
                logs["amp_clean_loss"] = trainer_versions.as_logged(logs["amp_clean_loss"])  # `loss`'s precision
        super().log(logs, *args, **kwargs)


class AMPTrainer(AMPMixin, Trainer):
    """`transformers.Trainer` with Adversarial Model Perturbation. Same constructor; AMP settings come from `args`."""


class AMPSeq2SeqTrainer(AMPMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer` with Adversarial Model Perturbation."""
