"""How flat is a solution? Sharpness measures and a 1-D loss landscape, for any model whose forward returns a loss.

Every function takes a model and an iterable of batches (dicts passed as `model(**batch)`), measures the mean of the
batches' losses in evaluation mode, and leaves the model exactly as it found it: weights (a saved copy is copied back),
and the train/eval mode of every module.

- `hessian_top_eigenvalue`: the largest eigenvalue of the Hessian, by power iteration on Hessian-vector products.
- `worst_case_loss_increase`: the AMP loss minus the clean loss, by the trainer's own perturbation code.
- `loss_along_direction`: the loss along a filter-normalised random direction (Li et al., 2018), for plots.
- `SharpnessCallback`: the first two at every evaluation, logged as `eval_sharpness_hessian` / `eval_sharpness_amp`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from .config import AMPConfig
from .perturbation import perturbed_weights
from .sharding import is_partitioned, is_sharded

Batches = Iterable[Mapping[str, Any]]


# --------------------------------------------------------------------------------------------------- helpers
def _params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if any(is_sharded(p) or is_partitioned(p) for p in params):
        raise ValueError(
            "the sharpness tools measure a model whose parameters are whole on this process; this one is sharded "
            "(FSDP2 or DeepSpeed ZeRO-3). Measure an unsharded copy: the state dict the Trainer saves, loaded into "
            "the model class."
        )
    return params


def _loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    output = model(**inputs)
    loss = output["loss"] if isinstance(output, Mapping) else output[0]
    if loss is None:
        raise ValueError("the model returned no loss: the batches must carry labels (or whatever makes it compute one)")
    return loss.to(torch.promote_types(loss.dtype, torch.float32)).mean()  # fp32 at least, fp64 kept


def _mean_loss(model: torch.nn.Module, batches: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    return sum(_loss(model, batch) for batch in batches) / len(batches)


@contextlib.contextmanager
def _measuring(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and the math attention kernel (the one with a double backward) for the block; then the modes back.

    Weights are each measure's own business: the Hessian reads them only, the AMP measure goes through
    `perturbed_weights` (which copies θ back), the landscape copies its θ back itself.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            yield
    finally:
        for module, training in modes:
            module.train(training)


def _materialise(batches: Batches) -> list[Mapping[str, Any]]:
    batches = list(batches)
    if not batches:
        raise ValueError("no batches given: sharpness is measured on at least one batch")
    return batches


# --------------------------------------------------------------------------------------------------- measures
def hessian_top_eigenvalue(
    model: torch.nn.Module, batches: Batches, *, iters: int = 20, tol: float = 1e-3, seed: int = 0
) -> float:
    """Largest eigenvalue of the Hessian of the mean loss over the trainable parameters (power iteration).

    Each iteration costs one double-backward pass per batch. Stops when the estimate changes by less than `tol`
    (relative), or after `iters` iterations. Power iteration finds the eigenvalue of largest magnitude, which near a
    minimum is the largest one.
    """
    if iters < 1 or tol < 0:
        raise ValueError(f"hessian_top_eigenvalue needs iters >= 1 and tol >= 0, got iters={iters}, tol={tol}")
    batches = _materialise(batches)
    params = _params(model)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with _measuring(model):
        v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        estimate = None
        for _ in range(iters):
            hv = [torch.zeros_like(p) for p in params]
            for batch in batches:
                grads = torch.autograd.grad(_loss(model, batch), params, create_graph=True)
                dot = sum((g * x).sum() for g, x in zip(grads, v))
                for acc, h in zip(hv, torch.autograd.grad(dot, params)):
                    acc.add_(h, alpha=1.0 / len(batches))
            new = float(sum((h * x).sum() for h, x in zip(hv, v)))  # Rayleigh quotient vᵀHv, ‖v‖ = 1
            norm = torch.sqrt(sum((h * h).sum() for h in hv))
            if norm == 0:
                return 0.0
            v = [h / norm for h in hv]
            if estimate is not None and abs(new - estimate) <= tol * abs(estimate):
                return new
            estimate = new
    return estimate


def worst_case_loss_increase(
    model: torch.nn.Module,
    batches: Batches,
    *,
    epsilon: float,
    inner_lr: float = 1.0,
    inner_steps: int = 1,
    norm: str = "tensor",
) -> float:
    """AMP loss minus clean loss: max over the ball (as AMP's ascent finds it) of L(θ + Δ) − L(θ), on these batches.

    Uses `perturbed_weights`, the very code the trainer runs, with the gradient of the batches' mean loss.
    """
    batches = _materialise(batches)
    config = AMPConfig(epsilon=epsilon, inner_lr=inner_lr, inner_steps=inner_steps, norm=norm)
    params = _params(model)

    def gradient() -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss = _mean_loss(model, batches)
        return loss.detach(), list(torch.autograd.grad(loss, params))

    with _measuring(model):
        if not config.enabled:
            return 0.0
        with perturbed_weights(params, gradient, config) as ascent, torch.no_grad():
            perturbed_loss = _mean_loss(model, batches)
        return float(perturbed_loss - ascent.clean_loss)


def filter_normalised_direction(model: torch.nn.Module, seed: int = 0) -> list[torch.Tensor]:
    """A random direction scaled filter by filter to the weights' norms (Li et al., 2018).

    For every tensor with two or more dimensions, each filter (slice along dim 0) gets a Gaussian direction rescaled
    to that filter's norm; one-dimensional tensors (biases, normalisation) get zero, as in the paper.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    direction = []
    for p in _params(model):
        d = torch.randn(p.shape, generator=generator).to(p)
        if p.dim() <= 1:
            d.zero_()
        else:
            d_norms = d.flatten(1).norm(dim=1).clamp_min(1e-12)
            p_norms = p.detach().flatten(1).norm(dim=1)
            d.mul_((p_norms / d_norms).view(-1, *([1] * (p.dim() - 1))))
        direction.append(d)
    return direction


def loss_along_direction(
    model: torch.nn.Module,
    batches: Batches,
    *,
    alphas: Sequence[float],
    direction: Sequence[torch.Tensor] | None = None,
    seed: int = 0,
) -> list[float]:
    """Mean loss at θ + α·d for each α: a 1-D loss landscape. `d` defaults to a seeded filter-normalised direction."""
    batches = _materialise(batches)
    params = _params(model)
    direction = list(direction) if direction is not None else filter_normalised_direction(model, seed)
    if len(direction) != len(params) or any(d.shape != p.shape for d, p in zip(direction, params)):
        raise ValueError("direction must hold one tensor per trainable parameter, with the same shapes")
    losses = []
    theta = [p.detach().clone() for p in params]
    with _measuring(model), torch.no_grad():
        try:
            for alpha in alphas:
                for p, t, d in zip(params, theta, direction):
                    p.copy_(t + alpha * d)
                losses.append(float(_mean_loss(model, batches)))
        finally:  # θ back by copy, exactly, also when a forward raises
            for p, t in zip(params, theta):
                p.copy_(t)
    return losses


# --------------------------------------------------------------------------------------------------- callback
class SharpnessCallback(TrainerCallback):
    """Adds `eval_sharpness_hessian` and `eval_sharpness_amp` to every evaluation.

    Measured on the first `num_batches` evaluation batches. The AMP radius and geometry default to the run's own
    `amp_*` arguments (the reference defaults for a plain `TrainingArguments`), so ERM and AMP runs compare.

    The values always go into the metrics `evaluate()` returns (so `eval_results.json`) and into the evaluation's
    entry of `state.log_history` (so `trainer_state.json`). A callback runs after the Trainer has already sent the
    evaluation's log to the `report_to` backends; to send the values there too, give the callback its trainer:
    `trainer.add_callback(SharpnessCallback(trainer=trainer))`, and they are logged through `trainer.log`.
    """

    def __init__(
        self, num_batches: int = 2, hessian_iters: int = 10, epsilon: float | None = None, trainer: Any = None
    ) -> None:
        self.num_batches = num_batches
        self.hessian_iters = hessian_iters
        self.epsilon = epsilon
        self.trainer = trainer

    def on_evaluate(self, args, state, control, model=None, eval_dataloader=None, metrics=None, **kwargs):
        if model is None or eval_dataloader is None or metrics is None:
            return
        batches = list(itertools.islice(eval_dataloader, self.num_batches))
        config = AMPConfig.from_args(args)
        epsilon = self.epsilon if self.epsilon is not None else config.epsilon
        values = {
            "eval_sharpness_hessian": hessian_top_eigenvalue(model, batches, iters=self.hessian_iters),
            "eval_sharpness_amp": worst_case_loss_increase(
                model, batches, epsilon=epsilon, inner_lr=config.inner_lr, norm=config.norm,
                inner_steps=max(config.inner_steps, 1),
            ),
        }  # fmt: skip
        metrics.update(values)
        if self.trainer is not None:
            self.trainer.log(dict(values))
        elif state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
