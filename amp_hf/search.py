"""Search AMP's settings with the Trainer's own `hyperparameter_search` and Optuna, soundly: the search proposes
candidates, `amp_hf.compare` on fresh seeds judges them (docs/search.md has the whole recipe and the reasoning).

    from amp_hf.search import amp_search, best_training_arguments, candidates_argument

    result = amp_search(trainer, n_trials=12)  # trial 0 is plain ERM, run once; then 11 AMP settings
    final_args = best_training_arguments(trainer.args, result)  # your arguments, with the best amp_* values
    print(candidates_argument(result, top=3))  # the --candidates of python -m amp_hf.compare

`trainer.hyperparameter_search` alone gets four things wrong for this question (docs/search.md says how each shows),
which `amp_search` fixes by handing the Trainer what it needs: the objective is `metric_for_best_model` in the
direction of `greater_is_better` (`objective_for`, `direction_for`), scored on each trial's best checkpoint; ERM runs
once, as trial 0 (`study.enqueue_trial`); the user's arguments are put back afterwards, and `best_training_arguments`
is `dataclasses.replace` of them. Every trial trains with `args.seed`, so trials are paired and the winner's score is
optimistic: `amp_hf.compare` on seeds the search did not use judges it.

The Trainer `setattr`s each trial's values on the same arguments object and never resets them, so every AMP trial
returns all of `amp_inner_steps`, `amp_norm`, `amp_epsilon` and `amp_inner_lr`; Optuna needs one distribution per
parameter name, so each ball samples its ε under its own name (`amp_epsilon_global`, ...), which
`best_amp_arguments` maps back.

Optuna is an optional dependency (`pip install "amp-hf[search]"`); this module imports it only where it must.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shlex
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from .config import NORMS

if TYPE_CHECKING:  # pragma: no cover - type hints only
    import optuna
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import BestRun

logger = logging.getLogger(__name__)

Arguments = TypeVar("Arguments", bound="TrainingArguments")
HpSpace = Callable[[Any], Mapping[str, Any]]

METHOD_PARAM = "amp_method"
"""The Optuna parameter that picks one of the balls."""

BASELINE_PARAM = "amp_baseline"
"""The Optuna parameter only the ERM baseline trial has (one choice, `"erm"`): it names that trial in `study.trials`
and in the `BestRun`, so that `best_amp_arguments` maps it back to plain ERM."""

ERM = "erm"
"""The value of `BASELINE_PARAM` on the ERM trial."""

ERM_ARGUMENTS: Mapping[str, Any] = MappingProxyType({"amp_inner_steps": 0})
"""Plain ERM: no ascent pass, bit-identical to `transformers.Trainer`."""

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


# ------------------------------------------------------------------------------------------------------ the space
def amp_search_space(
    trial: optuna.Trial,
    *,
    norms: Sequence[str] = ("global", "elementwise", "tensor"),
    epsilon_ranges: Mapping[str, tuple[float, float]] | None = None,
    inner_lrs: Mapping[str, float] | None = None,
    inner_steps: int = 1,
    extra: Callable[[optuna.Trial], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """An Optuna trial's AMP settings, as `AMPTrainingArguments` keyword arguments: the `hp_space` of a search.

    The trial picks `amp_method` among `norms`, and the result is that `amp_norm`, an `amp_epsilon` log-uniform over
    the ball's range (`epsilon_ranges` overrides `EPSILON_RANGES` per norm) sampled as the parameter
    `amp_epsilon_<norm>`, the ball's fixed `amp_inner_lr` (`inner_lrs` overrides `INNER_LRS`) and
    `amp_inner_steps=inner_steps`. `extra(trial)` adds further keys, merged last, so it may also override these; it
    must return the same keys on every trial, as the Trainer never resets a key a previous trial set.

    Plain ERM is not among the choices: `amp_search` runs it once, as the first trial (a categorical choice ran it
    twice in 6 trials, identically, and not at all in some short searches).

    `hyperparameter_search` calls `hp_space(trial)` with the trial alone: bind the options with `functools.partial`,
    e.g. `partial(amp_search_space, norms=("global",))`.
    """
    method = trial.suggest_categorical(METHOD_PARAM, _choices(norms))
    low, high = _epsilon_range(method, epsilon_ranges)
    space: dict[str, Any] = {
        "amp_inner_steps": inner_steps,
        "amp_norm": method,
        "amp_epsilon": trial.suggest_float(f"amp_epsilon_{method}", low, high, log=True),
        "amp_inner_lr": _inner_lr(method, inner_lrs),
    }
    if extra is not None:
        space.update(extra(trial))
    return space


def with_erm_baseline(hp_space: HpSpace) -> Callable[[Any], dict[str, Any]]:
    """`hp_space`, except on the ERM baseline trial that `amp_search` enqueues, which trains plain ERM (and records
    `BASELINE_PARAM`, its only parameter). Everything else in the trial is the user's arguments as given: the baseline
    runs first, before any trial has changed them."""

    def space(trial: Any) -> dict[str, Any]:
        if is_erm_baseline(trial):
            return dict(ERM_ARGUMENTS)
        return dict(hp_space(trial))

    return space


def is_erm_baseline(trial: Any) -> bool:
    """Whether `trial` is the ERM baseline. A live trial carries the mark in the user attributes `enqueue_trial` gave
    it (its parameters are only known once suggested); a `FixedTrial` (a replay, or the copy of the trial that the
    Trainer hands the other processes of a distributed search) in its parameters."""
    from optuna.trial import FixedTrial

    if isinstance(trial, FixedTrial):
        try:
            return trial.suggest_categorical(BASELINE_PARAM, [ERM]) == ERM
        except ValueError:  # a FixedTrial refuses a parameter it was not given: not the baseline
            return False
    if trial.user_attrs.get(BASELINE_PARAM) != ERM:
        return False
    trial.suggest_categorical(BASELINE_PARAM, [ERM])  # one choice: no sampling; it marks the trial's parameters
    return True


# ------------------------------------------------------------------------------------- direction and objective
def direction_for(args: TrainingArguments, direction: str | None = None) -> str:
    """The Optuna direction that agrees with how the Trainer ranks checkpoints: "maximize" when `greater_is_better`
    (e.g. `metric_for_best_model="accuracy"`), else "minimize" (the loss). A `direction` that contradicts it is
    refused: the search would return the trial the Trainer's own best-checkpoint rule ranks worst."""
    metric, _, greater = _best_metric(args)
    implied = "maximize" if greater else "minimize"
    if direction is None:
        return implied
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    if direction != implied:
        raise ValueError(
            f"direction={direction!r} contradicts greater_is_better={greater} (metric_for_best_model={metric!r}): "
            f"the search would keep the trial the Trainer ranks worst. Leave direction out (it follows "
            f"greater_is_better) or set greater_is_better={direction == 'maximize'}"
        )
    return direction


def objective_for(trainer: Trainer) -> Callable[[dict[str, float]], float]:
    """A `compute_objective` for `hyperparameter_search` that scores each trial on its best checkpoint.

    The Trainer calls `compute_objective` on the metrics of each evaluation (`_report_to_hp_search`, before it updates
    `state.best_metric` with them) and the trial's result is the last value computed. This returns the value of
    `metric_for_best_model` (with the Trainer's "eval_" prefix), or `state.best_metric` when that is better: the
    trial's best value so far, so the last one is the value of the checkpoint `load_best_model_at_end` restores. The
    Trainer makes a new `state` per trial, so nothing carries over between trials. Without `metric_for_best_model`
    the Trainer keeps no best checkpoint: the objective is then `eval_loss` of the evaluation at hand (the last one is
    the weights training ends with). A NaN evaluation never replaces a best value (the Trainer's comparison is False
    for NaN too)."""

    def compute_objective(metrics: dict[str, float]) -> float:
        metric, key, greater = _best_metric(trainer.args)
        if key not in metrics:
            raise KeyError(
                f"objective_for: metric_for_best_model={metric!r} is {key!r} in the evaluation metrics, which have "
                f"{sorted(metrics)}; set metric_for_best_model to one of them (compute_metrics' keys, without eval_)"
            )
        value = float(metrics[key])
        best = trainer.state.best_metric if trainer.args.metric_for_best_model is not None else None
        if best is None or (value > best if greater else value < best):
            return value
        return float(best)

    return compute_objective


def _best_metric(args: TrainingArguments) -> tuple[str | None, str, bool]:
    """`metric_for_best_model` as given, its key in `evaluate()`'s metrics, and whether greater is better.

    The prefix rule is `Trainer._determine_best_metric`'s (it has no public form). Without a metric, the loss:
    what the Trainer's default objective is when there are no other metrics, and what it keeps best checkpoints on
    (`load_best_model_at_end` without a metric means "loss")."""
    metric = args.metric_for_best_model
    if metric is None:
        return None, "eval_loss", False
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    return metric, key, bool(args.greater_is_better)


# ------------------------------------------------------------------------------------------------- the search
@dataclass(frozen=True)
class SearchResult:
    """What `amp_search` found: the Trainer's `BestRun`, the Optuna study with every trial, and how to replay them."""

    best_run: BestRun | None
    """`hyperparameter_search`'s answer (None on the other processes of a distributed search)."""
    study: optuna.Study
    hp_space: HpSpace
    """The space the AMP trials were drawn from (without the baseline), to map a trial's parameters back."""
    metric: str
    """The key of the evaluation metric the trials were scored on (e.g. "eval_accuracy")."""
    direction: str
    seed: int
    """The seed every trial trained with: judge the candidates on other seeds (docs/search.md)."""

    @property
    def erm_value(self) -> float | None:
        """The ERM baseline trial's objective (its best checkpoint's metric), or None if it did not complete."""
        for trial in _complete_trials(self.study):
            if trial.params.get(BASELINE_PARAM) == ERM:
                return trial.value
        return None


def amp_search(
    trainer: Trainer,
    *,
    n_trials: int = 20,
    hp_space: HpSpace = amp_search_space,
    direction: str | None = None,
    compute_objective: Callable[[dict[str, float]], float] | None = None,
    erm_baseline: bool = True,
    **kwargs: Any,
) -> SearchResult:
    """`trainer.hyperparameter_search` with Optuna, set up to answer "which AMP settings are worth comparing with ERM":

    - scored on `metric_for_best_model` in the direction of `greater_is_better` (`objective_for`, `direction_for`),
      each trial on its best checkpoint;
    - trial 0 is plain ERM, run once (`erm_baseline=False` leaves it out); `n_trials` counts it;
    - every trial trains with `trainer.args.seed`, so trials are paired;
    - afterwards `trainer.args` holds the user's values again (the Trainer leaves the last trial's on it).

    `trainer` needs a `model_init` (a fresh model per trial, as `hyperparameter_search` requires). `kwargs` go to
    `hyperparameter_search` and on to `optuna.create_study` / `Study.optimize` (`sampler`, `pruner`, `timeout`, ...);
    a `storage` and `study_name` of your own make the search resumable (the baseline is not enqueued twice).
    """
    try:
        import optuna
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('amp_search needs Optuna: pip install "amp-hf[search]"') from err
    direction = direction_for(trainer.args, direction)
    metric, key, _ = _best_metric(trainer.args)
    if metric is None:
        logger.warning(
            "amp_search: metric_for_best_model is not set, so each trial is scored on eval_loss of its last "
            "evaluation. Set load_best_model_at_end=True and metric_for_best_model (with an eval_strategy) to score "
            "each trial on its best checkpoint, the baseline early stopping gives ERM for free."
        )
    storage = kwargs.pop("storage", None) or optuna.storages.InMemoryStorage()
    study_name = kwargs.pop("study_name", None) or f"amp_search-{uuid.uuid4().hex[:12]}"
    kwargs.pop("load_if_exists", None)  # always: the study made here, with the baseline enqueued, is the one searched
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"amp_search: the study {study_name!r} in storage is to {study.direction.name.lower()}, "
            f"but this search would {direction}"
        )
    if erm_baseline:
        has_baseline = any(t.user_attrs.get(BASELINE_PARAM) == ERM for t in study.get_trials(deepcopy=False))
        if not has_baseline and n_trials < 2:
            raise ValueError(f"amp_search: n_trials={n_trials} counts the ERM baseline; give at least 2")
        if not has_baseline:  # a resumed study has run it (or has it waiting) already
            study.enqueue_trial({BASELINE_PARAM: ERM}, user_attrs={BASELINE_PARAM: ERM})

    originals: dict[str, Any] = {}
    space = with_erm_baseline(hp_space)

    def recording_space(trial: Any) -> dict[str, Any]:
        values = space(trial)
        for name in values:  # first seen before this trial sets it, and no earlier trial did: the user's value
            if name not in originals and hasattr(trainer.args, name):
                originals[name] = getattr(trainer.args, name)
        return values

    try:
        best_run = trainer.hyperparameter_search(
            hp_space=recording_space,
            compute_objective=compute_objective or objective_for(trainer),
            n_trials=n_trials,
            direction=direction,
            backend="optuna",
            storage=storage,
            study_name=study_name,
            load_if_exists=True,
            **kwargs,
        )
    finally:
        for name, value in originals.items():
            setattr(trainer.args, name, value)
    return SearchResult(best_run, study, hp_space, key, direction, trainer.args.seed)


# ------------------------------------------------------------------------------------------ using the results
def best_amp_arguments(
    best_run: SearchResult | BestRun | Mapping[str, Any], hp_space: HpSpace | None = None
) -> dict[str, Any]:
    """The `amp_*` keyword arguments of the best trial (or of one trial's parameters).

    `hyperparameter_search` returns a `BestRun` whose `hyperparameters` are Optuna's raw parameters
    (`{"amp_method": "global", "amp_epsilon_global": 0.07}`, or `{"amp_baseline": "erm"}` for the ERM trial), not
    what the space returned, and the fixed `amp_inner_lr` is not among them. This replays the space (a
    `SearchResult`'s own, or pass the same `functools.partial` the search used) on those parameters, so the result is
    exactly the trial's settings. `best_run` may also be a plain mapping of parameters (`study.best_params`).
    """
    try:
        from optuna.trial import FixedTrial
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError('best_amp_arguments needs Optuna: pip install "amp-hf[search]"') from err
    if isinstance(best_run, SearchResult):
        hp_space = hp_space or best_run.hp_space
        if best_run.best_run is None:
            raise ValueError(
                "best_amp_arguments: this process has no BestRun (only the main process of a distributed search does)"
            )
        best_run = best_run.best_run
    params = best_run if isinstance(best_run, Mapping) else best_run.hyperparameters
    return with_erm_baseline(hp_space or amp_search_space)(FixedTrial(dict(params)))


def best_training_arguments(
    args: Arguments, best_run: SearchResult | BestRun | Mapping[str, Any], hp_space: HpSpace | None = None
) -> Arguments:
    """A copy of `args` with the best trial's `amp_*` values (`dataclasses.replace`, so the arguments' checks run
    again): the learning rate, epochs, evaluation and best-checkpoint settings stay yours. Pass the arguments as they
    were before the search (`trainer.args` after `amp_search`, which restores them)."""
    values = best_amp_arguments(best_run, hp_space)
    settable = {f.name for f in dataclasses.fields(args) if f.init}
    unknown = sorted(set(values) - settable)
    if unknown:
        raise ValueError(
            f"best_training_arguments: {type(args).__name__} has no field {', '.join(unknown)}; "
            "use AMPTrainingArguments (or a class with AMPArgumentsMixin first)"
        )
    return dataclasses.replace(args, **values)


def candidates_from(
    result: SearchResult | optuna.Study, top: int = 3, hp_space: HpSpace | None = None
) -> list[dict[str, Any]]:
    """The `amp_*` settings of the `top` best AMP trials, best first, distinct, as `amp_hf.compare` candidates.

    The ERM baseline is left out (compare always runs ERM), and so are trials that failed or scored a non-finite
    value. `compare` runs every candidate with the same training command, so settings other than `amp_*` (a learning
    rate from `extra`) cannot be candidates: they are refused, naming them.
    """
    if top < 1:
        raise ValueError(f"candidates_from: top must be >= 1, got {top}")
    study = result.study if isinstance(result, SearchResult) else result
    space = hp_space or (result.hp_space if isinstance(result, SearchResult) else amp_search_space)
    from optuna.study import StudyDirection

    trials = [t for t in _complete_trials(study) if t.params.get(BASELINE_PARAM) != ERM and math.isfinite(t.value)]
    trials.sort(key=lambda t: t.value, reverse=study.direction == StudyDirection.MAXIMIZE)
    candidates: list[dict[str, Any]] = []
    for trial in trials:
        settings = best_amp_arguments(trial.params, space)
        other = sorted(name for name in settings if not name.startswith("amp_"))
        if other:
            raise ValueError(
                f"candidates_from: trial {trial.number} also set {', '.join(other)}; compare runs every candidate "
                "with one training command, so only amp_* settings can be candidates. Fix these in the command "
                "(and search amp_* only, so ERM and AMP get the same ones)"
            )
        if settings not in candidates:
            candidates.append(settings)
        if len(candidates) == top:
            break
    return candidates


def candidates_argument(result: SearchResult | optuna.Study, top: int = 3, hp_space: HpSpace | None = None) -> str:
    """`candidates_from` as shell words for `python -m amp_hf.compare --candidates ...`: one quoted JSON object each."""
    return " ".join(shlex.quote(json.dumps(c, sort_keys=True)) for c in candidates_from(result, top, hp_space))


def _complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _choices(norms: Sequence[str]) -> list[str]:
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
    if not norms:
        raise ValueError(
            "amp_search_space: nothing to search (no norms); ERM runs once anyway, as amp_search's trial 0"
        )
    return norms


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
