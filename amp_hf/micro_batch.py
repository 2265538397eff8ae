"""One AMP micro-batch, whatever drives it: everything around the paper's box (`perturbation.perturbed_weights`).

AMPTrainer (`trainer.py`) and the custom-loop API (`loop.py`) each own one `MicroBatchAMP` and supply only the
micro-batch, its mean-loss function, the model and the optimizer step they are at. Here, once: unwrapping, FSDP2's
preparation and the ascent's head (`perturbed`), the direction Δ comes from (the ascent gradient, `_along_gradient`,
or the optimizer's first moment, `_along_momentum`, read from the optimizer given or seen by the step hooks), the
gradient at the current weights (`gradient`), the running statistics, skip decisions and the descent's fallback
(`fall_back`), θ's buffers, what is perturbed (`parameters`, `announce`, `warn_if_defaults_misfit`), the metrics
(`METRIC_NAMES`) and the optimizer-step hooks, which act only inside the owner's block and only on optimizers holding
its perturbed parameters (`_before_step`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from . import selection
from .batch import head_of_batch
from .config import AMPConfig
from .deepspeed_engine import zero3_gradient
from .first_moment import adam_family, first_moment_problem, first_moments, refusal
from .perturbation import AscentResult, ThetaBuffers, momentum_perturbed_weights, perturbed_weights
from .running_stats import kept_from_the_clean_pass
from .sharding import is_partitioned, is_sharded, layout
from .wrapped_models import (
    gradient_by_backward,
    has_reentrant_checkpoint,
    is_fsdp2,
    reshard,
    unwrapped,
    world_if_distributed,
)

logger = logging.getLogger(__name__)

METRIC_NAMES = ("amp_clean_loss", "amp_delta_norm", "amp_skipped", "amp_steps")
"""What both APIs add to a training log (`AMPTrainer.log`, `AMP.metrics`); docs/arguments.md says what each means."""

REENTRANT_UNDER_DEEPSPEED = (
    "AMPTrainer under DeepSpeed does not support reentrant gradient checkpointing (gradient_checkpointing_kwargs "
    "{'use_reentrant': True}, the default of transformers 4.x): a reentrant checkpoint refuses "
    "torch.autograd.grad, so the ascent gradient could only be taken by a real backward, which would feed the "
    "engine's gradient buffers. Set gradient_checkpointing_kwargs={'use_reentrant': False}, or set "
    "amp_inner_steps=0 / amp_epsilon=0 for plain training."
)
STEP_IN_BACKWARD = (
    "AMP: an optimizer stepped inside backward (a post-accumulate-grad hook, LOMO, a fused per-parameter step). "
    "Under AMP that step would be taken at the perturbed weights θ + Δ, in the middle of autograd, and the restore of "
    "θ would undo it. Step after backward (optimizer.step() once backward has returned), or set amp_inner_steps=0 / "
    "amp_epsilon=0 for plain training."
)
CLOSURE_STEP = (
    "AMP: optimizer.step(closure) inside an AMP block. The closure re-evaluates the loss inside the step, after θ "
    "was put back, so it would train plain ERM. Compute the loss and call backward in the block, then call "
    "optimizer.step() without a closure."
)
PRESET_ADVICE = (
    "amp_preset='finetune' (plain ERM, AMP off, for fine-tuning a pretrained model: on text the studies found no AMP "
    "setting that helps; vision was not measured), 'vit_from_scratch' (plain ERM: a vision transformer trained from "
    "scratch with AdamW), or compare AMP candidates such as 'sam' with ERM on your task first (python -m "
    "amp_hf.compare, docs/compare.md); amp_hf.presets lists the presets"
)
"""What the reference-defaults warning offers instead; each preset in parentheses is described by what it resolves to
(tests/test_presets.py checks that every one called plain ERM is, and no other)."""


class MicroBatchAMP:
    """The state one owner (a trainer, an `AMP` object) keeps between its AMP micro-batches (see the module)."""

    def __init__(self, config: AMPConfig) -> None:
        self.config = config
        self.window = MetricsWindow()
        self.skipped = 0
        """Micro-batches trained at θ because a loss or gradient was not finite (the ascent's, or the descent's)."""
        self._theta = ThetaBuffers()
        self._reentrant: tuple[int, bool] | None = None
        self._candidates: tuple[int, list[tuple[str, torch.nn.Parameter]]] | None = None
        self._block: _Block | None = None
        self._hooked = False
        self._perturbed_ids: frozenset[int] = frozenset()
        self.first_step: Callable[[torch.optim.Optimizer], None] | None = None
        """Called once, at the first step of an optimizer that holds the perturbed parameters (the loop's warning)."""
        self._stepped: weakref.ref | None = None
        """The last optimizer seen stepping the perturbed parameters: where the momentum direction is read when the
        owner names none."""

    @property
    def seen_optimizer(self) -> torch.optim.Optimizer | None:
        """The last optimizer seen stepping the perturbed parameters (None before its first step)."""
        return None if self._stepped is None else self._stepped()

    def parameters(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of every tensor AMP perturbs now: selected by the model's own names (cached per model
        as passed; unwrapping costs ~0.1 ms, as much as the glue), trainable (read every call: unfreezing recipes)."""
        if self._candidates is None or self._candidates[0] != id(model):
            self._candidates = (id(model), selection.candidates(unwrapped(model), self.config))
        return [(name, p) for name, p in self._candidates[1] if p.requires_grad]

    def release(self) -> None:
        """Frees θ's buffers (the end of training)."""
        self._theta = ThetaBuffers()

    # ------------------------------------------------------------------------------------- the gradient at θ (+ Δ)
    def gradient(
        self,
        module: torch.nn.Module,
        mean_loss: Callable[[], torch.Tensor],
        params: Sequence[torch.Tensor],
        scale: float | None,
        trainable: list[torch.Tensor] | None = None,
        engine: Any = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(mean loss, its gradient per parameter) at the current weights; `.grad` is left as it was.

        `scale`: the fp16 loss scale (GradScaler's or DeepSpeed's), multiplied in and divided out (an overflow stays
        inf and is caught as non-finite). `trainable`: under FSDP2, every trainable shard, listed before the forward.
        `engine`: the DeepSpeed engine, for ZeRO-3's partitioned gradients.
        """
        torch.clear_autocast_cache()  # an autocast region around the block caches copies of the weights before Δ
        loss = mean_loss()
        if loss.dim() > 0:  # nn.DataParallel, a loss_fn returning per-example losses
            loss = loss.mean()
        scaled = loss if scale is None else loss * scale
        params = list(params)
        if trainable is not None:  # FSDP2: the gradient reaches the shards only through the reduce-scatter
            grads = gradient_by_backward(trainable, scaled, params)
        elif self._has_reentrant_checkpoint(module, scaled):  # its backward refuses torch.autograd.grad
            if engine is not None:
                raise ValueError(REENTRANT_UNDER_DEEPSPEED)
            grads = gradient_by_backward([p for p in module.parameters() if p.requires_grad], scaled, params)
        elif any(is_partitioned(p) for p in params):
            grads = zero3_gradient(engine, scaled, params)
        else:
            if any(is_sharded(p) for p in params):
                raise ValueError(
                    "AMP found DTensor parameters in a model that is not an FSDP2 module (tensor parallelism?); "
                    "only FSDP2 (`fully_shard`) sharding is supported. Use FSDP2 or DDP."
                )
            grads = torch.autograd.grad(scaled, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        if scale is not None:
            grads = torch._foreach_div(grads, scale)  # out of place: autograd's tensors are not ours to write
        return loss.detach(), grads

    def _has_reentrant_checkpoint(self, module: torch.nn.Module, loss: torch.Tensor) -> bool:
        """Read from the graph once per model (a BERT-base graph, ~950 nodes, takes ~1 ms to walk)."""
        if self._reentrant is None or self._reentrant[0] != id(module):
            self._reentrant = (id(module), has_reentrant_checkpoint(loss))
        return self._reentrant[1]

    # ------------------------------------------------------------------------------------------------- the block
    @contextmanager
    def perturbed(
        self,
        model: torch.nn.Module,
        batch: Any,
        loss_of: Callable[[torch.nn.Module, Any], torch.Tensor],
        scale: float | None,
        engine: Any = None,
        optimizer: Any = None,
    ) -> Iterator[AscentResult]:
        """The weights at θ + Δ for the block (the descent), θ again afterwards, bit for bit, also on error.

        `loss_of(module, head)` is the mean loss of `head`, the micro-batch cut to `amp_ascent_fraction`, on the model
        without its wrappers. When nothing is perturbed the block runs at θ and the result is empty. `optimizer`: where
        the momentum direction is read (default: the one last seen stepping these parameters).
        """
        module, trainable = unwrapped(model), None
        if is_fsdp2(module):
            # A forward outside a block leaves the root's gathered weights registered in place of the shards: reshard,
            # then list the trainable shards (FSDP writes their `.grad`) and the perturbed parameters.
            reshard(module)
            trainable = [p for p in module.parameters() if p.requires_grad]
        params = [p for _, p in self.parameters(model)]
        if not params:
            yield AscentResult()
            return
        self._hook_once()
        self._perturbed_ids = frozenset(id(p) for p in params)
        saved = self._theta.for_params(params)
        if self.config.direction == "momentum":
            weights = self._along_momentum(params, saved, optimizer)
        else:
            weights = self._along_gradient(module, batch, loss_of, params, saved, scale, trainable, engine)
        block = _Block(module if trainable is not None else None)
        self._block = block
        try:
            with weights as result:
                block.result, block.local, block.saved = result, layout(params).local, saved
                if result.skipped:
                    momentum = self.config.direction == "momentum"
                    self._count_skip(
                        "the optimizer's first moment was not finite"
                        if momentum
                        else "the ascent's loss or gradient was not finite"
                    )
                torch.clear_autocast_cache()  # the descent must not run at copies of θ made by the clean pass
                yield result
        finally:
            self._block = None
            torch.clear_autocast_cache()

    @contextmanager
    def _along_gradient(
        self,
        module: torch.nn.Module,
        batch: Any,
        loss_of: Callable[[torch.nn.Module, Any], torch.Tensor],
        params: list[torch.Tensor],
        saved: list[torch.Tensor],
        scale: float | None,
        trainable: list[torch.Tensor] | None,
        engine: Any,
    ) -> Iterator[AscentResult]:
        """The paper's ascent: the clean pass and K − 1 more on the head of the micro-batch, one statistics update."""
        if trainable is not None:
            # Every pass of an AMP micro-batch reduce-scatters (the ascent must, and then the descent accumulates into
            # the sharded `.grad`); the Trainer's `no_sync` and accelerate's `accumulate` set it back when they exit.
            module.set_requires_gradient_sync(True)
        head = head_of_batch(batch, self.config.ascent_fraction)
        with kept_from_the_clean_pass(module) as clean_pass_done:
            passes: list[None] = []

            def gradient() -> tuple[torch.Tensor, list[torch.Tensor]]:
                loss_and_grads = self.gradient(module, lambda: loss_of(module, head), params, scale, trainable, engine)
                if not passes:  # the micro-batch's one running-statistics update: the clean pass's, at θ
                    clean_pass_done()
                passes.append(None)
                return loss_and_grads

            with perturbed_weights(params, gradient, self.config, saved, world_if_distributed()) as result:
                yield result

    def _along_momentum(self, params: list[torch.Tensor], saved: list[torch.Tensor], optimizer: Any) -> Any:
        """Momentum-SAM's direction: no pass of its own, so the block's pass is the micro-batch's only one, and makes
        its running-statistics update, as in ERM."""
        momenta = first_moments(optimizer if optimizer is not None else self.seen_optimizer, params)
        return momentum_perturbed_weights(params, momenta, self.config, saved, world_if_distributed())

    def take_metrics(
        self, device: Any, reduce: Callable[[torch.Tensor], torch.Tensor] | None, processes: int, empty: float
    ) -> dict[str, float]:
        """`METRIC_NAMES` since the last call (see `MetricsWindow.metrics`), and a new window; without
        `amp_clean_loss` for the momentum direction, which runs no clean pass to report."""
        window, self.window = self.window, MetricsWindow()
        metrics = window.metrics(device, reduce, processes, empty)
        if self.config.direction == "momentum":
            del metrics["amp_clean_loss"]
        return metrics

    def fall_back(self) -> None:
        """Inside the block: θ back now, for a descent pass whose loss at θ + Δ was not finite."""
        block = self._block
        block.result.restore()
        if block.fsdp_root is not None:
            reshard(block.fsdp_root)  # its gathered θ + Δ would outlive the restore

    def fell_back_from(self, loss_at_theta: torch.Tensor) -> None:
        """After `fall_back` and the pass at θ: counted as skipped when the loss at θ is finite (when it is not, the
        micro-batch is the Trainer's own non-finite case, e.g. a count of 0 items, not AMP's)."""
        if bool(torch.isfinite(loss_at_theta.detach()).all()):
            self._block.fell_back = True
            self._count_skip("the loss at θ + Δ was not finite where the loss at θ was")

    def _count_skip(self, why: str) -> None:
        self.skipped += 1
        if self.skipped == 1:
            logger.warning(
                "AMP: %s; that micro-batch trains at θ (plain ERM) and is counted in amp_skipped. A smaller "
                "amp_epsilon avoids it. (Warned once.)",
                why,
            )

    @property
    def fell_back(self) -> bool:
        """Inside the block: whether `fall_back` ran."""
        return self._block is not None and self._block.fell_back

    # --------------------------------------------------------------------------------------- optimizer-step hooks
    def _hook_once(self) -> None:
        """One global pre/post hook pair for this owner's lifetime (new closures per block would make a compiled
        `optimizer.step` recompile); they hold a weak reference, and are removed when the owner is collected."""
        if self._hooked:
            return
        self._hooked = True
        owner = weakref.ref(self)

        def before(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            amp = owner()
            if amp is not None:
                amp._before_step(optimizer, args, kwargs)

        def after(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            amp = owner()
            block = None if amp is None else amp._block
            if block is not None and block.result is not None and amp._holds(optimizer):
                with torch.no_grad():  # the stepped weights survive the exit's restore
                    torch._foreach_copy_(block.saved, block.local)

        handles = (register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after))
        weakref.finalize(self, _remove, handles)

    def _holds(self, optimizer: torch.optim.Optimizer) -> bool:
        ids = self._perturbed_ids
        return any(id(p) in ids for group in optimizer.param_groups for p in group["params"])

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """A step of an optimizer holding this owner's perturbed parameters: inside the block it starts from θ (the
        no_trainer scripts step inside their block), or is refused when it cannot."""
        if not self._holds(optimizer):
            return
        if self.first_step is not None:
            first, self.first_step = self.first_step, None
            first(optimizer)
        if self.config.direction == "momentum" and self.seen_optimizer is not optimizer:
            problem = first_moment_problem(optimizer)
            if problem is not None:
                raise ValueError(refusal(problem))
            self._stepped = weakref.ref(optimizer)
        block = self._block
        if block is None or block.result is None:
            return
        if torch._C._current_autograd_node() is not None:
            raise RuntimeError(STEP_IN_BACKWARD)
        if (len(args) > 1 and args[1] is not None) or kwargs.get("closure") is not None:  # args[0]: the optimizer
            raise RuntimeError(CLOSURE_STEP)
        block.result.restore()


@dataclass
class _Block:
    """The active block of an owner."""

    fsdp_root: torch.nn.Module | None
    result: AscentResult | None = None
    """None during the ascent passes; set once the weights are at θ + Δ."""
    local: list[torch.Tensor] | None = None
    saved: list[torch.Tensor] | None = None
    fell_back: bool = False


def _remove(handles: tuple) -> None:
    for handle in handles:
        handle.remove()


@dataclass
class MetricsWindow:
    """AMP's numbers since the last log. Device values stay on the device (no host sync per step)."""

    clean_sum: torch.Tensor | float = 0.0
    delta_sum: torch.Tensor | float = 0.0
    ascents: int = 0
    perturbed: int = 0
    skipped: int = 0
    steps: int = 0
    last_step: int | None = None

    def add(self, result: AscentResult, step: int, fell_back: bool = False) -> None:
        """One AMP micro-batch of optimizer step `step` (a micro-batch that was not an AMP step adds nothing, nor does
        one of the momentum direction before the optimizer has a first moment: it trained at θ)."""
        if result.clean_loss is None and not result.moved and not result.skipped:
            return
        if step != self.last_step:
            self.last_step, self.steps = step, self.steps + 1
        if result.clean_loss is not None:  # the momentum direction has no clean pass
            self.clean_sum = self.clean_sum + torch.nan_to_num(
                result.clean_loss.double(), nan=0.0, posinf=0.0, neginf=0.0
            )
            self.ascents += 1
        if result.skipped or fell_back:
            self.skipped += 1
        elif result.delta_norm is not None:
            self.delta_sum = self.delta_sum + result.delta_norm.double()
            self.perturbed += 1

    def metrics(
        self, device: Any, reduce: Callable[[torch.Tensor], torch.Tensor] | None, processes: int, empty: float
    ) -> dict[str, float]:
        """`METRIC_NAMES` over all processes (`reduce` sums a tensor over them; None: one process). `empty` is
        `amp_clean_loss` for a window without AMP micro-batches."""
        values = (self.clean_sum, self.delta_sum, self.ascents, self.perturbed, self.skipped, self.steps)
        totals = torch.stack([torch.as_tensor(x, dtype=torch.float64, device=device) for x in values])
        if reduce is not None:
            totals = reduce(totals)
        clean, delta, ascents, perturbed, skipped, steps = totals.tolist()
        return {
            "amp_clean_loss": clean / ascents if ascents else empty,
            "amp_delta_norm": delta / perturbed if perturbed else 0.0,
            "amp_skipped": int(skipped),
            "amp_steps": round(steps / max(1, processes)),
        }


# ------------------------------------------------------------------------------------------------ saying it
def announce(named_module: torch.nn.Module, config: AMPConfig) -> None:
    """The start-up line, at WARNING so that it shows at Python's default logging configuration (a user's script
    shows nothing below it): what AMP perturbs and the settings, or that AMP is off; and the selection's problems.
    Call it on the main process only."""
    if not config.enabled:
        logger.warning(
            "AMP is off (amp_inner_steps=%d, amp_epsilon=%g): plain training", config.inner_steps, config.epsilon
        )
        return
    found = selection.report(named_module, config)
    logger.warning("%s; settings %s", found.summary(), config)
    for problem in found.problems():
        logger.warning(problem)


def warn_if_defaults_misfit(model: torch.nn.Module | None, optimizer: Any = None) -> None:
    """Warns when the reference defaults (ε = 0.5 per tensor, the paper's for CNNs trained from scratch with SGD) meet
    what they are known to fail on: a model loaded from pretrained weights, or an Adam-family optimizer."""
    config = getattr(model, "config", None)
    source = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    reasons = []
    if isinstance(source, str) and source:
        reasons.append(f"a model loaded from pretrained weights ({source!r})")
    if (optimizer_name := adam_family(optimizer)) is not None:  # accelerate's AcceleratedOptimizer looked through
        reasons.append(f"an Adam-family optimizer ({optimizer_name})")
    if not reasons:
        return
    logger.warning(
        f"AMP runs with the reference defaults (ε = 0.5 per tensor, the paper's setting for CNNs trained from scratch "
        f"with SGD) on {' and '.join(reasons)}: there they are known to wreck training (docs/arguments.md, "
        "'Choosing ε by hand'). Use "
        f"{PRESET_ADVICE}, or set the amp_* values explicitly to silence this."
    )
