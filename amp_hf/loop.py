"""AMP (Adversarial Model Perturbation, not mixed precision) for custom training loops, with or without Accelerate.

The Trainer glue (`trainer.py`) and this module run the same step, `perturbation.perturbed_weights`; this module
only supplies what a loop has instead of a Trainer: the micro-batch, a loss function and the `Accelerator`.

    amp = AMP(model, accelerator=accelerator, amp_epsilon=0.5)        # after accelerator.prepare(...)
    for batch in train_dataloader:
        with accelerator.accumulate(model), amp.perturbed(batch):    # the ascent runs here; weights now θ + Δ
            loss = model(**batch).loss
            accelerator.backward(loss)                               # the descent gradient, taken at θ + Δ
        optimizer.step()                                             # θ is back: the step is taken from θ
        lr_scheduler.step()
        optimizer.zero_grad()

Per micro-batch, on an AMP step, `perturbed(batch)`:
  1. runs the ascent passes (clean + K − 1) on the model without its DDP wrapper, each on the micro-batch's own
     **mean** loss (`loss_fn`), its gradient from `torch.autograd.grad` unscaled by the fp16 GradScaler's scale:
     nothing is written to `.grad` and nothing is communicated, whatever the accumulation or the process count.
     With `amp_ascent_fraction` < 1 these passes see the head of the micro-batch only (`batch.py`);
  2. leaves the weights at θ + Δ for the block, where the loop's own forward and `accelerator.backward` take the
     descent gradient exactly as they would without AMP (loss scaling, accumulation, DDP's gradient sync);
  3. copies θ back on exit, also when the block raises, and puts BatchNorm running statistics back to their values
     after the clean pass (one update per micro-batch, as in plain training).
An optimizer step taken inside the block (the Hugging Face `*_no_trainer.py` scripts step inside their
`accelerator.accumulate` block) is taken from θ: a `torch.optim` step hook puts θ back just before it, and the exit
then keeps the stepped weights. So adding AMP to such a loop changes one line:
`with accelerator.accumulate(model):` becomes `with accelerator.accumulate(model), amp.perturbed(batch):`.
A non-finite ascent (an fp16 overflow) leaves the weights at θ for the block, sets `result.skipped` and logs a
warning: that micro-batch trains as plain ERM.

Optimizer steps are counted by this object, for `amp_interval` and `amp_start_step`: the micro-batch that ends an
accumulation window (`accelerator.sync_gradients` inside `accelerator.accumulate`) ends a step.

Under FSDP2 (`fully_shard`) the ascent's gradient is the average over the processes, as in AMPTrainer (`trainer.py`
says why); DeepSpeed, FSDP1 and offloaded FSDP2 are refused when `AMP` is built (`REFUSED_BACKENDS`).
Presets: `AMP(model, amp_preset="cnn_long_noisy", ...)` starts from a library preset (`amp_hf.presets`); explicit
`amp_*` keywords win over it, as with `AMPTrainingArguments(amp_preset=...)`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from . import selection
from .batch import head_of_batch
from .config import AMPConfig
from .perturbation import AscentResult, ThetaBuffers, perturbed_weights
from .presets import preset_config
from .running_stats import RunningStatsSnapshot
from .sharding import is_partitioned, is_sharded, layout
from .training_args import AMPArgumentsMixin
from .wrapped_models import (
    grad_scaler_scale,
    gradient_by_backward,
    has_reentrant_checkpoint,
    is_fsdp2,
    reshard,
    without_ddp,
    world_if_distributed,
)

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

    `model` is the model the loop trains: the one `accelerator.prepare` returned (a DDP wrapper under several
    processes), or the bare model. `accelerator` (optional) supplies the fp16 GradScaler, the accumulation boundary
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
        self.skipped = 0
        """Micro-batches whose ascent was not finite (trained at θ)."""
        self._window = _MetricsWindow()
        self._saved = ThetaBuffers()
        if self.config.enabled:
            self._check_supported()
        named = self._named_module()
        self._candidates = selection.candidates(named, self.config)
        self.selection = selection.report(named, self.config)
        """What AMP perturbs in this model; its `problems()` (patterns matching nothing) are logged as warnings."""
        if self.config.enabled and self._is_main_process():
            logger.info("%s; settings %s", self.selection.summary(), self.config)
            for problem in self.selection.problems():
                logger.warning(problem)

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
        module = without_ddp(self.model)
        if kind == "FSDP" and _fsdp2_plugin_without_offload(self.accelerator):
            kind = None
        if type(module).__name__ == "DeepSpeedEngine" or any(is_partitioned(p) for p in module.parameters()):
            kind = "DEEPSPEED"
        elif any(is_sharded(p) for p in module.parameters()) and not is_fsdp2(module):
            kind = "TENSOR_PARALLEL"
        if kind in REFUSED_BACKENDS:
            raise ValueError(
                f"amp_hf.AMP does not support {kind} in a custom loop: {REFUSED_BACKENDS[kind]}. Use DDP, FSDP2 "
                "or one process (AMPTrainer for DeepSpeed), or set amp_inner_steps=0 / amp_epsilon=0 for plain "
                "training."
            )

    def _named_module(self) -> torch.nn.Module:
        """The model whose parameter names the patterns match: no DDP wrapper, no `torch.compile` prefix."""
        module = without_ddp(self.model)
        return getattr(module, "_orig_mod", module)

    def _is_main_process(self) -> bool:
        return bool(getattr(self.accelerator, "is_main_process", True))

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of every tensor AMP perturbs now: trainable (read every call), selected by the patterns."""
        return [(name, p) for name, p in self._candidates if p.requires_grad]

    # ---------------------------------------------------------------------------------------------------- the step
    @contextmanager
    def perturbed(self, batch: Any, loss_fn: LossFn | None = None) -> Iterator[AscentResult]:
        """Weights at θ + Δ inside the block for this micro-batch, θ again (bit for bit) after it, also on error.

        `loss_fn(module, batch)` (default: this object's, else `module(**batch).loss`) must return the micro-batch's
        mean loss; the ascent calls it with the model without its DDP wrapper and, with `amp_ascent_fraction` < 1,
        the head of the batch. The block must compute the loss itself (through the wrapped model) and call
        `accelerator.backward` (or `loss.backward()`); the optimizer steps after the block. The result's
        `clean_loss` (L at θ) and `delta_norm` (‖Δ‖) are device tensors for logging, None when this micro-batch
        is not an AMP step (`amp_interval`, `amp_start_step`, K = 0 or ε = 0); `skipped` is True when the ascent
        was not finite and the block ran at θ.
        """
        ends_step = bool(getattr(self.accelerator, "sync_gradients", True))
        result = AscentResult()
        try:
            params = [p for _, p in self.named_parameters()] if self.config.applies_at(self.optimizer_steps) else []
            if not params:
                yield result
                return
            with self._ascent(batch, loss_fn or self.loss_fn, params) as result:
                yield result
        finally:
            self._window.add(result, ends_step)
            if ends_step:
                self.optimizer_steps += 1

    def metrics(self) -> dict[str, float]:
        """AMP's numbers since the last call, for the loop's logger; call it on every process (one reduction).

        `amp_clean_loss`: mean loss at θ of the AMP micro-batches; `amp_delta_norm`: mean ‖Δ‖ of those perturbed;
        `amp_skipped`: micro-batches whose ascent was not finite; `amp_steps`: optimizer steps with AMP. Sums and
        counts are over all processes (`amp_steps` per process, as every process takes the same steps).
        """
        window, self._window = self._window, _MetricsWindow()
        device = getattr(self.accelerator, "device", "cpu")
        totals = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=device) for x in window.values()])
        if getattr(self.accelerator, "num_processes", 1) > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        loss_sum, delta_sum, ascents, perturbed, skipped, steps = totals.tolist()
        processes = max(1, int(getattr(self.accelerator, "num_processes", 1)))
        return {
            "amp_clean_loss": loss_sum / ascents if ascents else float("nan"),
            "amp_delta_norm": delta_sum / perturbed if perturbed else 0.0,
            "amp_skipped": int(skipped),
            "amp_steps": round(steps / processes),
        }

    @contextmanager
    def _ascent(self, batch: Any, loss_fn: LossFn, params: list[torch.Tensor]) -> Iterator[AscentResult]:
        module = without_ddp(self.model)
        head = head_of_batch(batch, self.config.ascent_fraction)
        stats: RunningStatsSnapshot | None = None

        sharded = is_fsdp2(module)
        trainable: list[torch.Tensor] = []
        if sharded:
            # FSDP2: the ascent's gradient reaches the shards only through a reduce-scatter, so every pass of an AMP
            # micro-batch syncs, the descent too (it accumulates into the sharded `.grad`, not an unsharded buffer);
            # accelerate's `accumulate` turns sync back to its own setting when it exits, as it always does. The
            # root module may still hold gathered weights (an evaluation, a forward outside the block): reshard, and
            # list the trainable shards now, before a forward swaps the root's parameters for gathered copies.
            module.set_requires_gradient_sync(True)
            reshard(module)
            trainable = [p for p in module.parameters() if p.requires_grad]

        def gradient() -> tuple[torch.Tensor, list[torch.Tensor]]:
            nonlocal stats
            torch.clear_autocast_cache()  # see below: the weights have just changed
            loss = loss_fn(module, head)
            if loss.dim() > 0:
                loss = loss.mean()
            if stats is None:  # right after the clean pass: later passes must not move the running statistics
                stats = RunningStatsSnapshot(module)
            scale = grad_scaler_scale(self.accelerator)
            scaled = loss if scale is None else loss * scale
            if sharded:  # the gradient averaged over the processes, as AMPTrainer's under FSDP2
                grads = gradient_by_backward(trainable, scaled, params)
            elif has_reentrant_checkpoint(scaled):  # its backward refuses torch.autograd.grad
                grads = gradient_by_backward([p for p in module.parameters() if p.requires_grad], scaled, params)
            else:
                grads = torch.autograd.grad(scaled, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            if scale is not None:
                torch._foreach_div_(grads, scale)  # an overflow stays inf and is caught as non-finite
            return loss.detach(), grads

        try:
            saved = self._saved.for_params(params)
            with perturbed_weights(params, gradient, self.config, saved, world_if_distributed()) as result:
                if result.skipped:
                    self.skipped += 1
                    logger.warning(
                        "AMP: the ascent's loss or gradient was not finite (optimizer step %d); this micro-batch "
                        "trains at θ (plain ERM). %d such micro-batches so far; a smaller amp_epsilon avoids it.",
                        self.optimizer_steps,
                        self.skipped,
                    )
                # An autocast region around the whole block (`with accelerator.autocast(), amp.perturbed(batch):`)
                # caches its low-precision copies of the weights: drop them, or the descent would run at the
                # copies of θ the clean pass made. The same on the way out, for passes after the block.
                torch.clear_autocast_cache()
                with _steps_from_theta(result.restore, layout(params).local, saved):
                    yield result
        finally:
            torch.clear_autocast_cache()
            if stats is not None:
                stats.restore()


def _fsdp2_plugin_without_offload(accelerator: Any) -> bool:
    """Whether accelerate's FSDP plugin asks for FSDP2 without parameter offload (what AMPTrainer accepts too)."""
    plugin = getattr(getattr(accelerator, "state", None), "fsdp_plugin", None)
    offload = getattr(plugin, "cpu_offload", None)
    return getattr(plugin, "fsdp_version", 1) == 2 and type(offload).__name__ != "CPUOffloadPolicy"


@dataclass
class _MetricsWindow:
    """Sums for `AMP.metrics`; device values stay on the device until `metrics` is called (no host sync per step)."""

    loss_sum: torch.Tensor | float = 0.0
    delta_sum: torch.Tensor | float = 0.0
    ascents: int = 0
    perturbed: int = 0
    skipped: int = 0
    steps: int = 0

    def add(self, result: AscentResult, ends_step: bool) -> None:
        if result.clean_loss is None:
            return
        self.loss_sum = self.loss_sum + result.clean_loss.double()
        self.ascents += 1
        self.steps += int(ends_step)
        if result.skipped:
            self.skipped += 1
        elif result.delta_norm is not None:
            self.delta_sum = self.delta_sum + result.delta_norm.double()
            self.perturbed += 1

    def values(self) -> list[torch.Tensor | float]:
        return [self.loss_sum, self.delta_sum, self.ascents, self.perturbed, self.skipped, self.steps]


@contextmanager
def _steps_from_theta(
    restore: Callable[[], None], params: list[torch.Tensor], saved: list[torch.Tensor]
) -> Iterator[None]:
    """Any `torch.optim` optimizer step inside the block starts from θ, and its result survives the block's exit.

    Before the step, θ is put back (`restore`); after it, the stepped weights are written over the saved θ, so the
    exit's restore (a copy of the saved values) keeps them. Steps skipped by the GradScaler or by accelerate outside
    an accumulation boundary call no hook, so the weights stay at θ + Δ and the exit restores θ as usual.
    """

    def before_step(*_: Any) -> None:
        restore()

    def after_step(*_: Any) -> None:
        with torch.no_grad():
            torch._foreach_copy_(saved, params)

    handles = [register_optimizer_step_pre_hook(before_step), register_optimizer_step_post_hook(after_step)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
