"""ε search through `Trainer.hyperparameter_search` with Optuna (`amp_hf.search`).

The point to prove is that each trial trains with its own AMP settings: the Trainer applies a trial's values to the
shared arguments object inside `train()`, so a trainer that read its AMP settings at any other moment would silently
train every trial with the previous one's. Optuna is imported at the top on purpose: it is installed by `make test`
(the `search` extra), and a missing Optuna must fail these tests, not skip them.
"""

from __future__ import annotations

import functools
import math

import optuna
import pytest
from helpers import DictDataset, TinyClassifier, tiny_args
from optuna.trial import FixedTrial
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import BestRun

from amp_hf import AMPTrainer, AMPTrainingArguments
from amp_hf.config import NORMS
from amp_hf.micro_batch import METRIC_NAMES as METRIC_KEYS
from amp_hf.search import EPSILON_RANGES, INNER_LRS, amp_search_space, best_amp_arguments

AMP_KEYS = {"amp_inner_steps", "amp_norm", "amp_epsilon", "amp_inner_lr"}


def fixed(method: str, epsilon: float | None = None, **more) -> FixedTrial:
    """A trial that picks `method`, with ε at the geometric middle of the method's default range unless given."""
    params = {"amp_method": method, **more}
    if method != "erm":
        low, high = EPSILON_RANGES[method]
        params[f"amp_epsilon_{method}"] = math.sqrt(low * high) if epsilon is None else epsilon
    return FixedTrial(params)


# ------------------------------------------------------------------------------------------------ the space alone
@pytest.mark.parametrize("method", ["erm", *NORMS])
def test_each_method_gives_valid_training_arguments(method, tmp_path):
    space = amp_search_space(fixed(method), norms=NORMS)
    args = AMPTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **space)
    config = args.amp_config
    if method == "erm":
        assert space == {"amp_inner_steps": 0}
        assert not config.enabled  # plain ERM: the Trainer's own step, no extra pass
    else:
        # Every ball sets all four keys: the Trainer never resets a key, so an ERM trial's amp_inner_steps=0 or a
        # global trial's ζ = 100 would otherwise leak into the next trial.
        assert set(space) == AMP_KEYS
        low, high = EPSILON_RANGES[method]
        assert config.enabled
        assert config.norm == method
        assert config.epsilon == pytest.approx(math.sqrt(low * high))
        assert config.inner_lr == INNER_LRS[method]
        assert config.inner_steps == 1


def test_default_space_has_erm_global_elementwise_tensor():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    amp_search_space(trial)
    choices = trial.distributions["amp_method"].choices
    assert choices == ("erm", "global", "elementwise", "tensor")
    assert INNER_LRS["global"] == INNER_LRS["elementwise"] == 100.0
    assert INNER_LRS["tensor"] == INNER_LRS["relative"] == 1.0


def test_options_bind_with_partial_and_extra_keys_merge(tmp_path):
    space_fn = functools.partial(
        amp_search_space,
        norms=("global",),
        include_erm=False,
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
        (dict(norms=(), include_erm=False), "nothing to search"),
        (dict(norms=("global",), epsilon_ranges={"global": (0.5, 0.1)}), "0 < low <= high"),
        (dict(norms=("global",), epsilon_ranges={"global": (0.0, 0.1)}), "0 < low <= high"),
    ],
)
def test_bad_options_fail_on_the_first_trial(options, error):
    with pytest.raises((ValueError, TypeError), match=error):
        amp_search_space(fixed("global"), **options)


def test_best_amp_arguments_replays_the_space():
    space_fn = functools.partial(amp_search_space, norms=("global", "tensor"))
    params = {"amp_method": "global", "amp_epsilon_global": 0.07}
    expected = {"amp_inner_steps": 1, "amp_norm": "global", "amp_epsilon": 0.07, "amp_inner_lr": 100.0}
    assert best_amp_arguments(BestRun("3", 0.5, params), space_fn) == expected
    assert best_amp_arguments(params) == expected  # a plain mapping (study.best_params), default space
    assert best_amp_arguments({"amp_method": "erm"}) == {"amp_inner_steps": 0}


# ------------------------------------------------------------------------------------------ the search, for real
class TrialRecorder(TrainerCallback):
    """What the trainer really trained each trial with: its AMP settings at the start, and its training logs."""

    def __init__(self) -> None:
        self.trainer: AMPTrainer | None = None
        self.configs: list = []
        self.train_logs: list[list[dict]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.configs.append(self.trainer.amp_config)

    def on_train_end(self, args, state, control, **kwargs):
        self.train_logs.append([entry for entry in state.log_history if "loss" in entry])


def test_hyperparameter_search_trains_each_trial_with_its_own_settings(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train, val = DictDataset(n=32), DictDataset(n=16, seed=2)
    recorder = TrialRecorder()
    # The initial arguments are AMP's defaults (tensor ball, ε = 0.5, ζ = 1): no trial below samples them.
    trainer = AMPTrainer(
        model_init=lambda: TinyClassifier(),  # a fresh, identically seeded model per trial
        args=tiny_args(tmp_path),
        train_dataset=train,
        eval_dataset=val,
        callbacks=[recorder],
    )
    recorder.trainer = trainer

    space_fn = functools.partial(amp_search_space, norms=("global", "tensor"))
    spaces: list[dict] = []
    objectives: list[float] = []

    def hp_space(trial):
        spaces.append(space_fn(trial))
        return spaces[-1]

    def compute_objective(metrics):
        objectives.append(metrics["eval_loss"])
        return objectives[-1]

    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=compute_objective,
        backend="optuna",
        n_trials=4,
        direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )

    assert len(spaces) == len(recorder.configs) == len(recorder.train_logs) == len(objectives) == 4
    methods = [space.get("amp_norm", "erm") if space["amp_inner_steps"] else "erm" for space in spaces]
    assert {"erm", "global", "tensor"} <= set(methods), f"sampler seed no longer covers every method: {methods}"
    n_tensors = len(list(TinyClassifier().parameters()))

    for method, space, config, logs in zip(methods, spaces, recorder.configs, recorder.train_logs):
        assert len(logs) == 3  # logging_steps=1, max_steps=3
        if method == "erm":
            assert not config.enabled, f"an ERM trial trained with {config}"
            assert not any(key in entry for entry in logs for key in METRIC_KEYS)
            continue
        assert (config.norm, config.epsilon, config.inner_lr, config.inner_steps) == (
            space["amp_norm"],
            space["amp_epsilon"],
            space["amp_inner_lr"],
            space["amp_inner_steps"],
        ), f"a {method} trial trained with {config}, not its own {space}"
        eps = space["amp_epsilon"]
        for entry in logs:
            delta = entry["amp_delta_norm"]
            if method == "global":  # ζ = 100 puts Δ on the sphere: ‖Δ‖ is this trial's ε and nothing else
                assert delta == pytest.approx(eps, rel=1e-5)
            else:  # each tensor within its own ball of radius ε
                assert 0 < delta <= eps * math.sqrt(n_tensors) * (1 + 1e-5)

    assert best.objective == min(objectives)
    assert best.run_id == str(objectives.index(min(objectives)))
    assert best_amp_arguments(best, space_fn) == spaces[int(best.run_id)]

    # The ERM trial is the plain Trainer: same model, data and seed give the very same validation loss.
    plain = Trainer(
        model_init=lambda: TinyClassifier(), args=tiny_args(tmp_path / "plain"), train_dataset=train, eval_dataset=val
    )
    plain.train()
    assert objectives[methods.index("erm")] == plain.evaluate()["eval_loss"]
