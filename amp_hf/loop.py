"""AMP (Adversarial Model Perturbation, not mixed precision) for custom training loops, with or without Accelerate.

One AMP micro-batch is `micro_batch.py`'s, shared with AMPTrainer; this module only supplies what a loop has instead
of a Trainer: the micro-batch, a loss function and the `Accelerator`.

    amp = AMP(model, accelerator=accelerator, amp_epsilon=0.5)        # after accelerator.prepare(...)
    for batch in train_dataloader:
        with accelerator.accumulate(model), amp.perturbed(batch):    # the ascent runs here; weights now θ + Δ
            loss = model(**batch).loss
            accelerator.backward(loss)                               # the descent gradient, taken at θ + Δ
        optimizer.step()                                             # θ is back: the step is taken from θ
        lr_scheduler.step()
        optimizer.zero_grad()

Per micro-batch, on an AMP step, `perturbed(batch)`:
  1. runs the ascent passes (clean + K − 1) on the model inside its DDP / compile wrappers, each on the micro-batch's
     own **mean** loss (`loss_fn`; the head of the micro-batch with `amp_ascent_fraction` < 1): nothing is written to
     `.grad` and nothing is communicated, whatever the accumulation or the process count;
  2. leaves the weights at θ + Δ for the block, where the loop's own forward and `accelerator.backward` take the
     descent gradient exactly as they would without AMP (loss scaling, accumulation, DDP's gradient sync);
  3. copies θ back on exit, also when the block raises; BatchNorm running statistics are updated once, by the
     clean pass at θ (`running_stats.py`).
An optimizer step taken inside the block (the Hugging Face `*_no_trainer.py` scripts step inside their
`accelerator.accumulate` block) is taken from θ: this object's `torch.optim` step hook puts θ back just before it,
and the exit then keeps the stepped weights. So adding AMP to such a loop changes one line:
`with accelerator.accumulate(model):` becomes `with accelerator.accumulate(model), amp.perturbed(batch):`.
The hook acts only on optimizers that hold this object's perturbed parameters (a GAN's other optimizer, another
`AMP` object's model are left alone). Refused, with a RuntimeError saying what to do instead: a block of this object
inside another, `optimizer.step(closure)` inside the block, and an optimizer that steps inside backward.
A non-finite ascent (an fp16 overflow) leaves the weights at θ for the block, sets `result.skipped` and logs a
warning: that micro-batch trains as plain ERM.

Optimizer steps are counted by this object, for `amp_interval` and `amp_start_step`: a block that ends while
`accelerator.sync_gradients` is set (read when the block exits, so either order of the context managers counts the
same) ends a step; a block that raises counts none.

Under FSDP2 (`fully_shard`) the ascent's gradient is the average over the processes, as in AMPTrainer; DeepSpeed,
FSDP1 and offloaded FSDP2 are refused when `AMP` is built (`REFUSED_BACKENDS`).
Presets: `AMP(model, amp_preset="cnn_long_noisy", ...)` starts from a library preset (`amp_hf.presets`); explicit
`amp_*` keywords win over it, as with `AMPTrainingArguments(amp_preset=...)`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import torch

from . import selection
from .batch import head_of_batch
from .config import AMPConfig
from .micro_batch import MicroBatchAMP, announce, defaults_warning
from .perturbation import AscentResult
from .presets import preset_config
from .sharding import fsdp_plugin_problem, is_partitioned, is_sharded
from .training_args import AMPArgumentsMixin
from .wrapped_models import grad_scaler_scale, is_fsdp2, unwrapped

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
"""`loss_fn(module, batch)`: the micro-batch's mean loss with `module` (the model without its DDP wrapper)."""

SETTING_NAMES = tuple(f"amp_{f.name}" for f in fields(AMPConfig))
"""The keyword arguments `AMP` takes: the `amp_*` fields of `AMPTrainingArguments`, with the same meaning."""

REFUSED_BACKENDS = {
    "FSDP": "only FSDP2 (`fully_shard`, accelerate's fsdp_version 2) without CPU offload is supported; FSDP1's flat "
    "parameters hide the tensors, and offloaded shards are not verified",
    "TENSOR_PARALLEL": "DTensor parameters in a model that is not an FSDP2 module (tensor parallelism?) are not split "
    "over one group the way the whole-tensor norms need",
    "DEEPSPEED": "accelerate's backward steps DeepSpeed's optimizer inside it, which under AMP would step at θ + Δ, "
    "and the custom-loop API does not hold that step back yet (AMPTrainer supports ZeRO 1-3)",
    "MEGATRON_LM": "Megatron-LM's model and tensor parallelism hide the whole parameter tensors",
}
"""accelerate `DistributedType` names the custom-loop API refuses, and why."""


def config_from_settings(config: AMPConfig | None = None, **amp_settings: Any) -> AMPConfig:
    """One validated `AMPConfig` from `amp_*` keywords (the names of `AMPTrainingArguments`), over `config`.

    The validation is `AMPConfig`'s own, so the messages name the same `amp_*` field as the Trainer path does.
    A preset comes in as `config` (`presets.preset_config`); the explicit keywords win over it.
    """
    unknown = sorted(set(amp_settings) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(f"AMP got unknown setting(s) {unknown}; allowed: {', '.join(SETTING_NAMES)}")
    base = config if config is not None else AMPConfig()
    values = {name: getattr(base, name[len("amp_") :]) for name in SETTING_NAMES}
    values.update(amp_settings)
    return AMPConfig.from_args(SimpleNamespace(**values))


def default_loss(module: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The loss a Hugging Face model returns for a dict batch with labels: `module(**batch).loss`."""
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"AMP.perturbed got a batch of type {type(batch).__name__} and no loss_fn; the default loss_fn calls "
            "module(**batch).loss, which needs a dict. Pass loss_fn=lambda module, batch: <mean loss>."
        )
    outputs = module(**batch)
    loss = outputs["loss"] if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss for the batch (are the labels in it?); pass loss_fn= instead")
    return loss


def add_amp_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the `--amp_*` flags of `AMPTrainingArguments` (same names and help, `--amp_preset` included) to an argparse
    parser, for scripts in the Hugging Face `*_no_trainer.py` style; `AMP.from_args(model, args, ...)` reads them
    back. Flags left out stay None, so that, as with `AMPTrainingArguments`, a preset fills only what was not given."""
    group = parser.add_argument_group("AMP (Adversarial Model Perturbation)")
    defaults = AMPConfig()
    for spec in fields(AMPArgumentsMixin):
        help_text = spec.metadata.get("help")
        if spec.name == "amp_preset":
            group.add_argument(f"--{spec.name}", default=None, help=help_text)  # validated, with the names, by AMP
            continue
        default = getattr(defaults, spec.name[len("amp_") :])
        if isinstance(default, tuple):  # include / exclude: separate words, as with HfArgumentParser
            group.add_argument(f"--{spec.name}", nargs="+", default=None, help=help_text)
        else:
            choices = spec.metadata.get("choices")
            group.add_argument(f"--{spec.name}", type=type(default), default=None, choices=choices, help=help_text)
    return parser


class AMP:
    """Adversarial Model Perturbation for a custom training loop (see the module docstring for the loop).

    `model` is the model the loop trains: the one `accelerator.prepare` returned (a DDP or compile wrapper, in any
    order), or the bare model. `accelerator` (optional) supplies the fp16 GradScaler, the accumulation boundary
    and the distributed type; without one, every `perturbed` call is one optimizer step. Settings are the
    `amp_*` keywords of `AMPTrainingArguments` (`amp_epsilon`, `amp_inner_steps`, `amp_inner_lr`, `amp_norm`,
    `amp_interval`, `amp_start_step`, `amp_include`, `amp_exclude`, `amp_ascent_fraction`), validated the same way,
    over a named `amp_preset` (`amp_hf.presets`) or a whole `config=AMPConfig(...)`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        accelerator: Any = None,
        config: AMPConfig | None = None,
        loss_fn: LossFn | None = None,
        amp_preset: str | None = None,
        **amp_settings: Any,
    ) -> None:
        reference_defaults = amp_preset is None and config is None and not amp_settings
        if amp_preset is not None:
            if config is not None:
                raise ValueError("AMP takes amp_preset or config, not both: the preset would be ignored")
            config = preset_config(amp_preset)  # its amp_* values; the explicit keywords below win
        self.config = config_from_settings(config, **amp_settings)
        self.model = model
        self.accelerator = accelerator
        self.loss_fn = loss_fn or default_loss
        self.optimizer_steps = 0
        """Optimizer steps taken so far, as counted by `perturbed` (set it when resuming a run)."""
        self._amp = MicroBatchAMP(self.config)
        self._open = False
        if self.config.enabled:
            self._check_supported()
        named = unwrapped(model)
        self.selection = selection.report(named, self.config)
        """What AMP perturbs in this model; its `problems()` (patterns matching nothing) are logged as warnings."""
        if self._is_main_process():
            announce(named, self.config)
            if reference_defaults and self.config.enabled:  # the model now; the optimizer at its first step
                self._amp.first_step = lambda optimizer: self._warn(defaults_warning(None, optimizer))
                self._warn(defaults_warning(named))

    @classmethod
    def from_args(cls, model: torch.nn.Module, args: Any, *, accelerator: Any = None, **kwargs: Any) -> AMP:
        """AMP with the `amp_*` attributes of `args`: training arguments (their resolved `amp_config`), or an
        argparse namespace from `add_amp_arguments`, whose `amp_preset` fills the flags left out (None)."""
        if isinstance(getattr(args, "amp_config", None), AMPConfig):
            return cls(model, accelerator=accelerator, config=args.amp_config, **kwargs)
        given = {name: getattr(args, name) for name in SETTING_NAMES if getattr(args, name, None) is not None}
        return cls(model, accelerator=accelerator, amp_preset=getattr(args, "amp_preset", None), **given, **kwargs)

    # ------------------------------------------------------------------------------------------------- set-up
    def _check_supported(self) -> None:
        """Refuses the set-ups the custom-loop glue does not handle, before anything trains."""
        kind = getattr(getattr(self.accelerator, "distributed_type", None), "name", None)
        module = unwrapped(self.model)
        if kind == "FSDP" and fsdp_plugin_problem(self.accelerator) is None:
            kind = None
        if type(self.model).__name__ == "DeepSpeedEngine" or any(is_partitioned(p) for p in module.parameters()):
            kind = "DEEPSPEED"
        elif any(is_sharded(p) for p in module.parameters()) and not is_fsdp2(module):
            kind = "TENSOR_PARALLEL"
        if kind in REFUSED_BACKENDS:
            raise ValueError(
                f"amp_hf.AMP does not support {kind} in a custom loop: {REFUSED_BACKENDS[kind]}. Use DDP, FSDP2 "
                "or one process (AMPTrainer for DeepSpeed), or set amp_inner_steps=0 / amp_epsilon=0 for plain "
                "training."
            )

    @staticmethod
    def _warn(message: str | None) -> None:
        if message is not None:
            logger.warning(message)

    def _is_main_process(self) -> bool:
        return bool(getattr(self.accelerator, "is_main_process", True))

    @property
    def skipped(self) -> int:
        """Micro-batches whose ascent was not finite (trained at θ)."""
        return self._amp.skipped

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of every tensor AMP perturbs now: trainable (read every call), selected by the patterns."""
        return self._amp.parameters(self.model)

    # ---------------------------------------------------------------------------------------------------- the step
    @contextmanager
    def perturbed(self, batch: Any, loss_fn: LossFn | None = None) -> Iterator[AscentResult]:
        """Weights at θ + Δ inside the block for this micro-batch, θ again (bit for bit) after it, also on error.

        `loss_fn(module, batch)` (default: this object's, else `module(**batch).loss`) must return the micro-batch's
        mean loss; the ascent calls it with the model without its DDP and compile wrappers and, with
        `amp_ascent_fraction` < 1, the head of the batch. The block must compute the loss itself (through the wrapped
        model) and call `accelerator.backward` (or `loss.backward()`); the optimizer steps after the block, or inside
        it (then from θ). The result's `clean_loss` (L at θ) and `delta_norm` (‖Δ‖) are device tensors for logging,
        None when this micro-batch is not an AMP step (`amp_interval`, `amp_start_step`, K = 0 or ε = 0); `skipped`
        is True when the ascent was not finite and the block ran at θ.
        """
        if self._open:
            raise RuntimeError(
                "AMP.perturbed: a block of this AMP object is already open (nested blocks would save θ + Δ as θ). "
                "Close one block before opening the next; for two models, build one AMP object per model."
            )
        step = self.optimizer_steps
        self._open = True
        try:
            with self._ascent(batch, loss_fn or self.loss_fn, step) as result:
                yield result
        finally:
            self._open = False
        # Only a block that did not raise gets here. The boundary is read now, at the exit: inside or outside
        # `accelerator.accumulate`, it is this micro-batch's.
        self._amp.window.add(result, step)
        if bool(getattr(self.accelerator, "sync_gradients", True)):
            self.optimizer_steps += 1

    @contextmanager
    def _ascent(self, batch: Any, loss_fn: LossFn, step: int) -> Iterator[AscentResult]:
        if self.config.applies_at(step):
            module = unwrapped(self.model)
            trainable = self._amp.prepare(module)
            params = [p for _, p in self.named_parameters()]
            if params:
                head = head_of_batch(batch, self.config.ascent_fraction)
                scale = grad_scaler_scale(self.accelerator)
                with self._amp.perturbed(module, params, lambda: loss_fn(module, head), scale, trainable) as result:
                    yield result
                return
        yield AscentResult()

    def metrics(self) -> dict[str, float]:
        """AMP's numbers since the last call (`micro_batch.METRIC_NAMES`, as AMPTrainer logs them), for the loop's
        logger; call it on every process (one reduction).

        `amp_clean_loss`: mean loss at θ of the AMP micro-batches (NaN without any); `amp_delta_norm`: mean ‖Δ‖ of
        those perturbed; `amp_skipped`: micro-batches trained at θ because a loss was not finite; `amp_steps`:
        optimizer steps with AMP. Sums and counts are over all processes (`amp_steps` per process).
        """
        window, self._amp.window = self._amp.window, type(self._amp.window)()
        processes = max(1, int(getattr(self.accelerator, "num_processes", 1)))
        reduce = None if processes == 1 else (lambda t: self.accelerator.reduce(t, reduction="sum"))
        return window.metrics(getattr(self.accelerator, "device", "cpu"), reduce, processes, float("nan"))
