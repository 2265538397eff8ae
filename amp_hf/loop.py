"""AMP (Adversarial Model Perturbation, not mixed precision) for custom training loops, with or without Accelerate.

One AMP micro-batch is `micro_batch.py`'s, shared with AMPTrainer; this module supplies only what a loop has instead
of a Trainer: the micro-batch, a loss function and the `Accelerator`. The whole change to a loop is one line:

    amp = AMP(model, accelerator=accelerator, amp_preset="cnn_long_noisy")    # after accelerator.prepare(...)
    for batch in train_dataloader:
        with accelerator.accumulate(model), amp.perturbed(batch):    # the ascent runs here; weights now θ + Δ
            accelerator.backward(model(**batch).loss)                # the descent gradient, taken at θ + Δ
            optimizer.step()                                         # taken from θ (this object's step hook)
            optimizer.zero_grad()

θ is copied back on exit, also on error. What a loop could silently turn into plain training (a nested block of one
object, `optimizer.step(closure)` in the block, an optimizer stepping inside backward) is refused; steps are counted
when the block exits, so the order of the context managers does not matter. docs/custom-loops.md has the rest.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from typing import Any

import torch

from . import selection
from .config import AMPConfig
from .first_moment import first_moment_problem, refusal, warn_if_radius_misfits
from .micro_batch import MicroBatchAMP, announce, warn_if_defaults_misfit
from .perturbation import AscentResult
from .presets import SETTING_NAMES, resolve
from .sharding import fsdp_plugin_problem, is_partitioned, is_sharded
from .training_args import AMPArgumentsMixin
from .wrapped_models import grad_scaler_scale, is_fsdp2, unwrapped

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
"""`loss_fn(module, batch)`: the micro-batch's mean loss with `module` (the model without its DDP wrapper)."""


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

    `model`: the model the loop trains, as `accelerator.prepare` returned it (DDP and compile wrappers are looked
    through) or bare. `accelerator` (optional) supplies the fp16 GradScaler, the accumulation boundary and the
    distributed type; without one, every `perturbed` call is one optimizer step. `optimizer` (optional): where
    `amp_direction='momentum'` reads Δ; without it, the optimizer seen stepping the perturbed parameters (its step
    hooks see it), from its first step on. Settings: the `amp_*` keywords of `AMPTrainingArguments`, validated the
    same way, over a named `amp_preset` or a whole `config=AMPConfig(...)`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        accelerator: Any = None,
        config: AMPConfig | None = None,
        loss_fn: LossFn | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        amp_preset: str | None = None,
        **amp_settings: Any,
    ) -> None:
        reference_defaults = amp_preset is None and config is None and not amp_settings
        if amp_preset is not None and config is not None:
            raise ValueError("AMP takes amp_preset or config, not both: the preset would be ignored")
        if config is not None:  # a whole config is explicit values for every setting; the keywords win over it
            amp_settings = {**{f"amp_{f.name}": getattr(config, f.name) for f in fields(AMPConfig)}, **amp_settings}
        self.config = resolve(amp_preset, amp_settings)
        self.model = model
        self.accelerator = accelerator
        self.loss_fn = loss_fn or default_loss
        self.optimizer = optimizer
        """Where amp_direction='momentum' reads Δ; None: the optimizer seen stepping the perturbed parameters."""
        self._boundaries = 0  # optimizer steps this object has counted (`optimizer_steps` may be set on resume)
        self.optimizer_steps = 0
        """Optimizer steps taken so far, as counted by `perturbed` (set it when resuming a run)."""
        self._amp = MicroBatchAMP(self.config)
        self._open = False
        if self.config.enabled:
            self._check_supported()
            if self.config.direction == "momentum" and optimizer is not None:
                problem = first_moment_problem(optimizer)
                if problem is not None:
                    raise ValueError(refusal(problem))
        named = unwrapped(model)
        self.selection = selection.report(named, self.config)
        """What AMP perturbs in this model; its `problems()` (patterns matching nothing) are logged as warnings."""
        if getattr(accelerator, "is_main_process", True):
            announce(named, self.config)
            if reference_defaults and self.config.enabled:  # the model now; the optimizer at its first step
                self._amp.first_step = lambda optimizer: warn_if_defaults_misfit(None, optimizer)
                warn_if_defaults_misfit(named)
            elif self.config.direction == "momentum" and optimizer is not None:
                warn_if_radius_misfits(self.config, optimizer)
            elif self.config.direction == "momentum":  # the optimizer is known at its first step
                self._amp.first_step = lambda found: warn_if_radius_misfits(self.config, found)

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

        `loss_fn(module, batch)` (default: this object's, else `module(**batch).loss`) returns the micro-batch's mean
        loss; the ascent calls it with the unwrapped model and, with `amp_ascent_fraction` < 1, the head of the batch.
        The block computes its own loss and backward; the optimizer steps after the block, or inside it (from θ).
        The result's `clean_loss` and `delta_norm` are None when this micro-batch is not an AMP step; `skipped` is
        True when the ascent was not finite and the block ran at θ.
        """
        if self._open:
            raise RuntimeError(
                "AMP.perturbed: a block of this AMP object is already open (nested blocks would save θ + Δ as θ). "
                "Close one block before opening the next; for two models, build one AMP object per model."
            )
        step, loss_fn = self.optimizer_steps, loss_fn or self.loss_fn
        ascent = None
        if self.config.applies_at(step) and self.config.direction == "momentum":
            ascent = self._amp.perturbed(self.model, batch, loss_fn, None, optimizer=self._momentum_source())
        elif self.config.applies_at(step):  # the scale is read on AMP steps only: on a GPU, reading it syncs
            ascent = self._amp.perturbed(self.model, batch, loss_fn, grad_scaler_scale(self.accelerator))
        self._open = True
        try:
            with ascent or nullcontext(AscentResult()) as result:
                yield result
        finally:
            self._open = False
        # Only a block that did not raise gets here. The boundary is read now, at the exit: inside or outside
        # `accelerator.accumulate`, it is this micro-batch's.
        self._amp.window.add(result, step)
        if bool(getattr(self.accelerator, "sync_gradients", True)):
            self.optimizer_steps += 1
            self._boundaries += 1

    def _momentum_source(self) -> Any:
        """The optimizer the momentum direction reads: the one given, else the one seen stepping; refused when an
        optimizer step has passed and none holding the perturbed parameters was seen (Δ would stay 0: plain ERM)."""
        optimizer = self.optimizer if self.optimizer is not None else self._amp.seen_optimizer
        if optimizer is None and self._boundaries > 0:
            raise RuntimeError(
                "AMP with amp_direction='momentum': an optimizer step has passed, but no optimizer holding the "
                "perturbed parameters was seen stepping (a step taken another way, e.g. by a fused backward "
                "hook), so there is no first moment to read and every step would be plain ERM. Pass the optimizer: "
                "AMP(model, optimizer=optimizer, ...)."
            )
        return optimizer

    def metrics(self) -> dict[str, float]:
        """AMP's numbers since the last call (`micro_batch.METRIC_NAMES`, as AMPTrainer logs them, docs/arguments.md;
        `amp_clean_loss` is NaN without an AMP micro-batch, absent for the momentum direction), summed over the
        processes: call it on every process."""
        processes = max(1, int(getattr(self.accelerator, "num_processes", 1)))
        reduce = None if processes == 1 else (lambda t: self.accelerator.reduce(t, reduction="sum"))
        return self._amp.take_metrics(getattr(self.accelerator, "device", "cpu"), reduce, processes, float("nan"))
