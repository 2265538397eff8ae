"""Search ε (and the ball's shape) with the Trainer's own `hyperparameter_search` and Optuna.

Which ε helps depends on the model, the optimizer and the schedule (README, "Choosing ε"), and whether AMP helps at all
is a question ERM must be allowed to win. So the search space here makes plain ERM one of its candidates, next to one
log-uniform ε range per ball, and plugs into `Trainer.hyperparameter_search` unchanged:

    from amp_hf.search import amp_search_space, best_amp_arguments

    best = trainer.hyperparameter_search(hp_space=amp_search_space, backend="optuna", n_trials=20,
                                         direction="minimize")
    args = AMPTrainingArguments(output_dir="out", **best_amp_arguments(best))

Two things about how the Trainer applies a trial (transformers 5.x, `Trainer._hp_search_setup`) shape this module:

- It `setattr`s each returned key on the *same* `TrainingArguments` object, trial after trial, and never resets it.
  A key that one trial sets and the next leaves out keeps the old trial's value. So every AMP branch returns all of
  `amp_inner_steps`, `amp_norm`, `amp_epsilon` and `amp_inner_lr` (an ERM trial sets `amp_inner_steps=0`, and the next
  AMP trial must set it back), and an `extra` space must return the same keys on every trial.
- Optuna needs a parameter name's distribution fixed for the whole study, so each ball samples its ε under its own name
  (`amp_epsilon_global`, ...). The `BestRun` the Trainer returns holds these raw Optuna parameters, not the
  `amp_*` arguments: `best_amp_arguments` maps them back.

Optuna is an optional dependency (`pip install "amp-hf[search]"`); this module imports it only where it must.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .config import NORMS

if TYPE_CHECKING:  # pragma: no cover - type hints only
    import optuna
    from transformers.trainer_utils import BestRun

METHOD_PARAM = "amp_method"
"""The Optuna parameter that picks plain ERM or one of the balls."""

ERM = "erm"
"""The `amp_method` choice that trains plain ERM: `amp_inner_steps=0`, bit-identical to `transformers.Trainer`."""

EPSILON_RANGES: dict[str, tuple[float, float]] = {
    # One radius per parameter tensor, ζ = 1 (the reference code). The accuracy study's winners were 0.005 (ViT from
    # scratch) and 0.02 (BatchNorm CNN); the reference's 0.5 diverged or collapsed on every task.
    "tensor": (1e-3, 5e-2),
    # One ball over all perturbed tensors, Δ on its sphere (ζ = 100): SAM's ρ, whose usual grid is 0.01-0.5; the study
    # kept 0.01 for fine-tuning MiniLM, 0.05 for the ViT and 0.1 for the CNN.
    "global": (1e-2, 5e-1),
    # A fraction of each tensor's own norm, ζ = 1 (in the spirit of AWP's γ ≈ 5e-3): the CNN's best was 0.005, the
    # ViT's 0.003, and 0.001 was already too much for fine-tuning.
    "relative": (1e-3, 2e-2),
    # Δ scaled elementwise by |θ|, on its sphere (ζ = 100): ASAM's adaptive ρ, 0.5-2.0 in its paper for training from
    # scratch; the range reaches an order of magnitude lower for short runs and fine-tuning.
    "elementwise": (5e-2, 2.0),
}
"""Default (low, high) of the log-uniform ε of each `amp_norm`: the radii mean different things per ball."""

INNER_LRS: dict[str, float] = {
    "tensor": 1.0,  # the reference's ζ, at which the tensor and relative ranges above were found
    "relative": 1.0,
    "global": 100.0,  # large enough that the first ascent step lands on the sphere, as SAM's normalised step does
    "elementwise": 100.0,  # likewise, as ASAM's
}
"""Fixed inner learning rate ζ per `amp_norm`. Not searched: with the ball's projection ζ mostly decides whether Δ
reaches the sphere, which ε already sizes, and a second axis would double the trials a search needs."""


def amp_search_space(
    trial: optuna.Trial,
    *,
    norms: Sequence[str] = ("global", "elementwise", "tensor"),
    include_erm: bool = True,
    epsilon_ranges: Mapping[str, tuple[float, float]] | None = None,
    inner_lrs: Mapping[str, float] | None = None,
    inner_steps: int = 1,
    extra: Callable[[optuna.Trial], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """An Optuna trial's AMP settings, as `AMPTrainingArguments` keyword arguments: the `hp_space` of a search.

    The trial picks `amp_method` among `"erm"` (if `include_erm`) and `norms`; for `"erm"` the result is
    `{"amp_inner_steps": 0}` (plain ERM, so the search can tell whether AMP helps at all), for a ball it is that
    `amp_norm`, an `amp_epsilon` log-uniform over the ball's range (`epsilon_ranges` overrides `EPSILON_RANGES` per
    norm) sampled as the parameter `amp_epsilon_<norm>`, the ball's fixed `amp_inner_lr` (`inner_lrs` overrides
    `INNER_LRS`) and `amp_inner_steps=inner_steps`. `extra(trial)` adds further keys (e.g. `learning_rate`), merged
    last, so it may also override these; it must return the same keys on every trial, as the Trainer never resets a
    key a previous trial set.

    `hyperparameter_search` calls `hp_space(trial)` with the trial alone: bind the options with `functools.partial`,
    e.g. `partial(amp_search_space, norms=("global",), extra=lambda t: {"learning_rate": ...})`.
    """
    choices = _choices(norms, include_erm)
    method = trial.suggest_categorical(METHOD_PARAM, choices)
    if method == ERM:
        space: dict[str, Any] = {"amp_inner_steps": 0}
    else:
        low, high = _epsilon_range(method, epsilon_ranges)
        space = {
            "amp_inner_steps": inner_steps,
            "amp_norm": method,
            "amp_epsilon": trial.suggest_float(f"amp_epsilon_{method}", low, high, log=True),
            "amp_inner_lr": _inner_lr(method, inner_lrs),
        }
    if extra is not None:
        space.update(extra(trial))
    return space


def best_amp_arguments(
    best_run: BestRun | Mapping[str, Any],
    hp_space: Callable[[Any], Mapping[str, Any]] = amp_search_space,
) -> dict[str, Any]:
    """The `AMPTrainingArguments` keyword arguments of the best trial, to train the final model with.

    `hyperparameter_search` returns a `BestRun` whose `hyperparameters` are Optuna's raw parameters
    (`{"amp_method": "global", "amp_epsilon_global": 0.07}`), not what the space returned, and the fixed
    `amp_inner_lr` is not among them. This replays `hp_space` (pass the same `functools.partial` the search used) on
    those parameters, so the result is exactly the winning trial's settings. `best_run` may also be a plain mapping
    of parameters, such as `study.best_params`.
    """
    try:
        from optuna.trial import FixedTrial
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('best_amp_arguments needs Optuna: pip install "amp-hf[search]"') from err
    params = best_run if isinstance(best_run, Mapping) else best_run.hyperparameters
    return dict(hp_space(FixedTrial(dict(params))))


def _choices(norms: Sequence[str], include_erm: bool) -> list[str]:
    """`amp_method`'s choices, checked here so that a typo fails on the first trial rather than in `train()`."""
    if isinstance(norms, str):
        raise TypeError(f"norms must be a sequence of amp_norm values, e.g. ({norms!r},), not a string")
    norms = list(norms)
    unknown = [n for n in norms if n not in NORMS]
    if unknown:
        allowed = ", ".join(repr(n) for n in NORMS)
        raise ValueError(f"amp_search_space: unknown amp_norm {unknown}; this version of amp_hf has {allowed}")
    if len(set(norms)) != len(norms):
        raise ValueError(f"amp_search_space: norms has duplicates: {norms}")
    choices = [ERM, *norms] if include_erm else norms
    if not choices:
        raise ValueError("amp_search_space: nothing to search (no norms and include_erm=False)")
    return choices


def _epsilon_range(norm: str, overrides: Mapping[str, tuple[float, float]] | None) -> tuple[float, float]:
    ranges = {**EPSILON_RANGES, **(overrides or {})}
    if norm not in ranges:
        raise ValueError(
            f"amp_search_space: no ε range for amp_norm={norm!r}; pass epsilon_ranges={{{norm!r}: (l, h)}}"
        )
    low, high = (float(x) for x in ranges[norm])
    if not 0 < low <= high:
        raise ValueError(f"amp_search_space: the ε range of {norm!r} must satisfy 0 < low <= high, got ({low}, {high})")
    return low, high


def _inner_lr(norm: str, overrides: Mapping[str, float] | None) -> float:
    inner_lrs = {**INNER_LRS, **(overrides or {})}
    if norm not in inner_lrs:
        raise ValueError(f"amp_search_space: no amp_inner_lr for amp_norm={norm!r}; pass inner_lrs={{{norm!r}: ζ}}")
    return float(inner_lrs[norm])
