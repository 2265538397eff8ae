"""The AMP search (`amp_hf.search`): the space, and `amp_search` over `Trainer.hyperparameter_search` with Optuna.

What must hold, each shown on a tiny Trainer search: each trial trains with its own AMP settings (the Trainer applies
a trial's values to the shared arguments object inside `train()`); the search ranks trials the way the Trainer ranks
checkpoints (`metric_for_best_model`, `greater_is_better`) and scores each on its best checkpoint, not its last
evaluation; plain ERM runs exactly once, first, on the same seed as every other trial; the user's arguments survive.
Optuna is imported at the top on purpose: it is installed by `make test` (the `search` extra), and a missing Optuna
must fail these tests, not skip them.
"""

from __future__ import annotations

import functools
import json
import math
import shlex
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from helpers import DictDataset, TinyClassifier, tiny_args
from optuna.trial import FixedTrial
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import BestRun

from amp_hf import AMPTrainer, AMPTrainingArguments
from amp_hf.config import NORMS
from amp_hf.micro_batch import METRIC_NAMES as METRIC_KEYS
from amp_hf.search import (
    BASELINE_PARAM,
    EPSILON_RANGES,
    INNER_LRS,
    amp_search,
    amp_search_space,
    best_amp_arguments,
    best_training_arguments,
    candidates_argument,
    candidates_from,
    direction_for,
    is_erm_baseline,
    objective_for,
)

AMP_KEYS = {"amp_inner_steps", "amp_norm", "amp_epsilon", "amp_inner_lr"}
optuna.logging.set_verbosity(optuna.logging.WARNING)


def fixed(method: str, epsilon: float | None = None, **more) -> FixedTrial:
    """A trial that picks `method`, with ε at the geometric middle of the method's default range unless given."""
    low, high = EPSILON_RANGES[method]
    params = {"amp_method": method, f"amp_epsilon_{method}": math.sqrt(low * high) if epsilon is None else epsilon}
    return FixedTrial({**params, **more})


# ------------------------------------------------------------------------------------------------ the space alone
@pytest.mark.parametrize("method", NORMS)
def test_each_method_gives_valid_training_arguments(method, tmp_path):
    space = amp_search_space(fixed(method), norms=NORMS)
    config = AMPTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **space).amp_config
    # Every ball sets all four keys: the Trainer never resets a key, so the ERM trial's amp_inner_steps=0 or a
    # global trial's ζ = 100 would otherwise leak into the next trial.
    assert set(space) == AMP_KEYS
    low, high = EPSILON_RANGES[method]
    assert config.enabled and config.norm == method and config.inner_steps == 1
    assert config.epsilon == pytest.approx(math.sqrt(low * high))
    assert config.inner_lr == INNER_LRS[method]


def test_erm_is_not_a_sampled_choice():
    """ERM as a categorical choice ran twice in 6 trials (identically) and may not run in a short search: it is
    amp_search's first trial instead, and never sampled."""
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    amp_search_space(trial)
    assert trial.distributions["amp_method"].choices == ("global", "elementwise", "tensor")
    assert INNER_LRS["global"] == INNER_LRS["elementwise"] == 100.0
    assert INNER_LRS["tensor"] == INNER_LRS["relative"] == 1.0


def test_options_bind_with_partial_and_extra_keys_merge(tmp_path):
    space_fn = functools.partial(
        amp_search_space,
        norms=("global",),
        epsilon_ranges={"global": (0.2, 0.3)},
        inner_lrs={"global": 10.0},
        inner_steps=2,
        extra=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)},
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    space = space_fn(trial)
    assert trial.distributions["amp_method"].choices == ("global",)
    assert 0.2 <= space["amp_epsilon"] <= 0.3
    assert space["amp_inner_lr"] == 10.0 and space["amp_inner_steps"] == 2
    assert 1e-4 <= space["learning_rate"] <= 1e-2
    args = AMPTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **space)
    assert args.learning_rate == space["learning_rate"]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (dict(norms=("global", "sphere")), "unknown amp_norm"),
        (dict(norms="global"), "not a string"),
        (dict(norms=("global", "global")), "duplicates"),
        (dict(norms=()), "nothing to search"),
        (dict(norms=("global",), epsilon_ranges={"global": (0.5, 0.1)}), "0 < low <= high"),
        (dict(norms=("global",), epsilon_ranges={"global": (0.0, 0.1)}), "0 < low <= high"),
    ],
)
def test_bad_options_fail_on_the_first_trial(options, error):
    with pytest.raises((ValueError, TypeError), match=error):
        amp_search_space(fixed("global"), **options)


def test_best_amp_arguments_replays_the_space_and_knows_the_baseline():
    space_fn = functools.partial(amp_search_space, norms=("global", "tensor"))
    params = {"amp_method": "global", "amp_epsilon_global": 0.07}
    expected = {"amp_inner_steps": 1, "amp_norm": "global", "amp_epsilon": 0.07, "amp_inner_lr": 100.0}
    assert best_amp_arguments(BestRun("3", 0.5, params), space_fn) == expected
    assert best_amp_arguments(params) == expected  # a plain mapping (study.best_params), default space
    assert best_amp_arguments(BestRun("0", 0.5, {BASELINE_PARAM: "erm"}), space_fn) == {"amp_inner_steps": 0}
    assert is_erm_baseline(FixedTrial({BASELINE_PARAM: "erm"})) and not is_erm_baseline(FixedTrial(params))


def test_best_training_arguments_keep_the_users_settings_also_for_erm(tmp_path):
    args = tiny_args(tmp_path, learning_rate=0.3, max_steps=9, eval_strategy="steps", metric_for_best_model="accuracy")
    erm = best_training_arguments(args, {BASELINE_PARAM: "erm"})
    assert erm.amp_inner_steps == 0 and not erm.amp_config.enabled
    assert (erm.learning_rate, erm.max_steps, erm.eval_strategy, erm.metric_for_best_model, erm.greater_is_better) == (
        0.3,
        9,
        args.eval_strategy,
        "accuracy",
        True,
    )
    assert args.amp_inner_steps == 1  # a copy: the user's own object is untouched
    with pytest.raises(ValueError, match=r"no field amp_epsilon.*AMPTrainingArguments"):
        best_training_arguments(
            TrainingArguments(str(tmp_path), report_to="none"), {"amp_method": "global", "amp_epsilon_global": 0.07}
        )


# ------------------------------------------------------------------------------- direction and objective alone
def test_direction_follows_greater_is_better_and_a_contradiction_is_refused(tmp_path):
    accuracy = tiny_args(tmp_path, metric_for_best_model="accuracy")
    assert accuracy.greater_is_better is True and direction_for(accuracy) == "maximize"
    assert direction_for(tiny_args(tmp_path)) == "minimize"  # no metric: the loss
    assert direction_for(tiny_args(tmp_path, metric_for_best_model="eval_loss")) == "minimize"
    with pytest.raises(ValueError, match=r"direction='minimize'.*greater_is_better=True.*'accuracy'"):
        direction_for(accuracy, "minimize")
    with pytest.raises(ValueError, match="'minimize' or 'maximize'"):
        direction_for(accuracy, "max")


def test_objective_is_the_best_value_so_far_of_metric_for_best_model(tmp_path):
    trainer = SimpleNamespace(args=tiny_args(tmp_path, metric_for_best_model="accuracy"), state=SimpleNamespace())
    objective = objective_for(trainer)
    trainer.state.best_metric = None  # the first evaluation of a trial
    assert objective({"eval_loss": 9.0, "eval_accuracy": 0.4, "eval_f1": 0.9}) == 0.4  # not the sum of metrics
    trainer.state.best_metric = 0.7  # an earlier evaluation of the same trial was better
    assert objective({"eval_loss": 0.1, "eval_accuracy": 0.5}) == 0.7
    assert objective({"eval_loss": 0.1, "eval_accuracy": 0.8}) == 0.8
    assert objective({"eval_loss": 0.1, "eval_accuracy": float("nan")}) == 0.7  # a diverged eval keeps the best
    with pytest.raises(KeyError, match=r"metric_for_best_model='accuracy'.*'eval_loss'"):
        objective({"eval_loss": 0.1})
    trainer.args = tiny_args(tmp_path)  # no metric_for_best_model: the loss of the evaluation at hand
    assert objective({"eval_loss": 0.3, "eval_accuracy": 0.5}) == 0.3


# ------------------------------------------------------------------------------------------ the search, for real
class TrialRecorder(TrainerCallback):
    """What the trainer really did in each trial: its AMP settings and seed at the start, its training logs, the
    metrics of each evaluation, and the Trainer's own best metric and checkpoint at the end."""

    def __init__(self) -> None:
        self.trainer: AMPTrainer | None = None
        self.configs: list = []
        self.seeds: list[int] = []
        self.learning_rates: list[float] = []
        self.train_logs: list[list[dict]] = []
        self.evaluations: list[list[dict]] = []
        self.best: list[tuple[float | None, str | None]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.configs.append(self.trainer.amp_config)
        self.seeds.append(args.seed)
        self.learning_rates.append(args.learning_rate)
        self.evaluations.append([])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations[-1].append(dict(metrics))

    def on_train_end(self, args, state, control, **kwargs):
        self.train_logs.append([entry for entry in state.log_history if "loss" in entry])
        self.best.append((state.best_metric, state.best_model_checkpoint))


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def searching_trainer(tmp_path, recorder: TrialRecorder, compute_metrics=accuracy, **overrides) -> AMPTrainer:
    """A trainer that evaluates and checkpoints every step and keeps the best checkpoint, as a user's search would."""
    settings = dict(
        max_steps=4,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
    )
    settings.update(overrides)
    trainer = AMPTrainer(
        model_init=lambda: TinyClassifier(),  # a fresh, identically seeded model per trial
        args=tiny_args(tmp_path, **settings),
        train_dataset=DictDataset(n=32),
        eval_dataset=DictDataset(n=24, seed=2),
        compute_metrics=compute_metrics,
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    return trainer


def test_search_ranks_by_accuracy_and_keeps_the_users_arguments(tmp_path):
    """A compute_metrics returning accuracy: the search returns the most accurate trial. The README's old recipe
    (the Trainer's default objective, the sum of metrics, with direction="minimize") returned the least accurate."""
    recorder = TrialRecorder()
    trainer = searching_trainer(tmp_path, recorder, learning_rate=0.5, num_train_epochs=7)
    user_args = trainer.args
    space = functools.partial(
        amp_search_space,
        norms=("global",),
        epsilon_ranges={"global": (1e-3, 30.0)},  # wide enough that trials learn differently
        extra=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 0.05, 2.0, log=True)},
    )
    result = amp_search(trainer, n_trials=4, hp_space=space, sampler=optuna.samplers.RandomSampler(seed=3))

    values = [trial.value for trial in result.study.trials]
    best_per_trial = [max(e["eval_accuracy"] for e in evaluations) for evaluations in recorder.evaluations]
    assert values == best_per_trial
    assert len(set(values)) > 1, f"the case must tell best from worst: {values}"
    assert result.direction == "maximize" and result.metric == "eval_accuracy"
    assert result.best_run.objective == max(values)
    assert result.best_run.run_id == str(values.index(max(values)))
    # what the old recipe optimised: the sum of the last evaluation's metrics, minimised
    old_objectives = [evaluations[-1]["eval_accuracy"] for evaluations in recorder.evaluations]
    assert old_objectives.index(min(old_objectives)) != int(result.best_run.run_id)

    # The trials changed learning_rate and amp_* on the shared arguments; amp_search puts the user's back.
    assert trainer.args is user_args
    assert trainer.args.learning_rate == 0.5 and trainer.args.amp_norm == "tensor" and trainer.args.amp_epsilon == 0.5
    assert len(set(recorder.learning_rates[1:])) == 3 and recorder.learning_rates[0] == 0.5  # ERM: the user's rate
    final = best_training_arguments(trainer.args, result)
    expected_amp = best_amp_arguments(result)
    assert {key: getattr(final, key) for key in expected_amp} == expected_amp
    for name in (
        "output_dir",
        "num_train_epochs",
        "max_steps",
        "eval_strategy",
        "eval_steps",
        "save_strategy",
        "load_best_model_at_end",
        "metric_for_best_model",
        "greater_is_better",
        "seed",
    ):
        assert getattr(final, name) == getattr(user_args, name), name
    if "learning_rate" not in expected_amp:
        assert final.learning_rate == 0.5
    assert type(final) is AMPTrainingArguments and final is not user_args
    # candidates for compare are amp_* only: a searched learning rate cannot be one (compare runs one command)
    with pytest.raises(ValueError, match="learning_rate"):
        candidates_from(result)


def test_each_trial_is_scored_on_its_best_checkpoint(tmp_path):
    """A trial whose last evaluation is worse than its best is scored by its best: the value of the checkpoint the
    Trainer keeps with load_best_model_at_end (its own state.best_metric), not the last one's."""
    scripted = {1: [0.2, 0.9, 0.4, 0.3], 2: [0.6, 0.6, 0.7, 0.8]}  # trial 1 peaks early; trial 2 ends highest
    recorder = TrialRecorder()

    def score(prediction) -> dict[str, float]:
        trial, evaluation = len(recorder.evaluations) - 1, len(recorder.evaluations[-1])
        return {**accuracy(prediction), "score": scripted.get(trial, [0.5] * 4)[evaluation]}

    trainer = searching_trainer(tmp_path, recorder, compute_metrics=score, metric_for_best_model="score")
    space = functools.partial(amp_search_space, norms=("global",))
    result = amp_search(trainer, n_trials=3, hp_space=space, sampler=optuna.samplers.RandomSampler(seed=0))

    values = [trial.value for trial in result.study.trials]
    assert values == [0.5, 0.9, 0.8]  # scored on the last evaluation it would be [0.5, 0.3, 0.8]
    assert values == [best for best, _ in recorder.best]  # the Trainer's own best metric of each trial
    assert recorder.best[1][1].endswith("checkpoint-2")  # the checkpoint load_best_model_at_end restored
    assert result.best_run.run_id == "1" and result.best_run.objective == 0.9
    assert result.erm_value == 0.5


def test_erm_runs_once_first_and_every_trial_its_own_settings_on_one_seed(tmp_path, caplog):
    """ERM is trial 0 and only trial 0; the other trials train with their own AMP settings (never the previous
    trial's); every trial trains with args.seed, paired; the ERM trial is the plain Trainer; candidates are the best
    AMP trials, ERM left out."""
    train, val = DictDataset(n=32), DictDataset(n=16, seed=2)
    recorder = TrialRecorder()
    # The initial arguments are AMP's defaults (tensor ball, ε = 0.5, ζ = 1): no trial below samples them.
    trainer = AMPTrainer(
        model_init=lambda: TinyClassifier(),
        args=tiny_args(tmp_path, seed=7),
        train_dataset=train,
        eval_dataset=val,
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    space_fn = functools.partial(amp_search_space, norms=("global", "tensor"))
    spaces: list[dict] = []

    def hp_space(trial):
        spaces.append(space_fn(trial))
        return spaces[-1]

    storage = optuna.storages.InMemoryStorage()
    search = functools.partial(amp_search, trainer, hp_space=hp_space, storage=storage, study_name="amp")
    with pytest.raises(ValueError, match="n_trials=1 counts the ERM baseline"):
        search(n_trials=1)
    with caplog.at_level("WARNING", logger="amp_hf.search"):
        result = search(n_trials=5, sampler=optuna.samplers.RandomSampler(seed=1))
    assert "metric_for_best_model is not set" in caplog.text  # scored on the last eval_loss: said, not silent

    assert len(recorder.configs) == len(recorder.train_logs) == 5
    erm_trials = [i for i, config in enumerate(recorder.configs) if config.inner_steps == 0]
    assert erm_trials == [0], f"ERM ran in trials {erm_trials}"
    assert result.study.trials[0].params == {BASELINE_PARAM: "erm"}
    assert len(spaces) == 4  # the space was asked for the AMP trials only
    assert recorder.seeds == [7] * 5 and result.seed == 7
    methods = [space["amp_norm"] for space in spaces]
    assert {"global", "tensor"} <= set(methods), f"sampler seed no longer covers every ball: {methods}"
    n_tensors = len(list(TinyClassifier().parameters()))

    assert not any(key in entry for entry in recorder.train_logs[0] for key in METRIC_KEYS)
    for space, config, logs in zip(spaces, recorder.configs[1:], recorder.train_logs[1:]):
        assert len(logs) == 3  # logging_steps=1, max_steps=3
        assert (config.norm, config.epsilon, config.inner_lr, config.inner_steps) == (
            space["amp_norm"],
            space["amp_epsilon"],
            space["amp_inner_lr"],
            space["amp_inner_steps"],
        ), f"a trial trained with {config}, not its own {space}"
        eps = space["amp_epsilon"]
        for entry in logs:
            delta = entry["amp_delta_norm"]
            if space["amp_norm"] == "global":  # ζ = 100 puts Δ on the sphere: ‖Δ‖ is this trial's ε and nothing else
                assert delta == pytest.approx(eps, rel=1e-5)
            else:  # each tensor within its own ball of radius ε
                assert 0 < delta <= eps * math.sqrt(n_tensors) * (1 + 1e-5)

    values = [trial.value for trial in result.study.trials]
    assert result.direction == "minimize" and result.best_run.objective == min(values)
    assert best_amp_arguments(result) == ([{"amp_inner_steps": 0}, *spaces])[int(result.best_run.run_id)]
    amp_order = sorted(range(4), key=lambda i: values[i + 1])
    assert candidates_from(result, top=2) == [spaces[i] for i in amp_order[:2]]
    assert [json.loads(word) for word in shlex.split(candidates_argument(result, top=2))] == candidates_from(result, 2)

    # Resumed (same storage and study name), the search goes on with AMP trials: ERM is not run again.
    more = search(n_trials=1, sampler=optuna.samplers.RandomSampler(seed=2))
    assert len(more.study.trials) == 6 and [c.inner_steps == 0 for c in recorder.configs].count(True) == 1

    # The ERM trial is the plain Trainer: same model, data and seed give the very same validation loss.
    plain = Trainer(
        model_init=lambda: TinyClassifier(),
        args=tiny_args(tmp_path / "plain", seed=7),
        train_dataset=train,
        eval_dataset=val,
    )
    plain.train()
    assert result.erm_value == values[0] == plain.evaluate()["eval_loss"]
