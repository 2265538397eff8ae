"""The benchmarks: the accuracy study's bookkeeping (the ε choice, the statistics, a real smoke run) and the cost
benchmark's memory count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
import cost  # noqa: E402
from accuracy import RunSpec, plan, summarise  # noqa: E402


def _row(spec: RunSpec, val: float, test: float, seconds: float) -> dict:
    return {"spec": asdict(spec), "label": spec.label(), "val_error": val, "test_error": test, "train_seconds": seconds}


def test_epsilon_is_chosen_on_validation_and_statistics_are_paired():
    seeds = [0, 1, 2]
    first, second = plan("cnn", seeds, quick=False)
    assert all(spec.seed != accuracy.TUNING_SEED for spec in first if spec.epsilon == 0.5 and spec.method == "amp")
    grid = [s for s in first if s.seed == accuracy.TUNING_SEED and s.method == "amp"]
    assert {s.norm for s in grid} == {"tensor", "global", "relative"}
    done = {s: _row(s, 0.10, 0.10, 10.0) for s in first if s.method == "erm"}
    for s in first:
        if s.method == "amp" and s.seed != accuracy.TUNING_SEED:
            done[s] = _row(s, 0.30, 0.30, 20.0)  # the defaults
    # On validation the larger tensor ε wins; on test (never consulted) it would lose.
    for s in grid:
        better = s.norm == "tensor" and s.epsilon == max(g.epsilon for g in grid if g.norm == "tensor")
        done[s] = _row(s, 0.05 if better else 0.09, 0.5 if better else 0.01, 20.0)
    rest, recommended = second(done)
    chosen = {s.norm: s.epsilon for s in rest if s.interval == 1 and s.inner_steps == 1 and not s.start}
    assert chosen["tensor"] == max(accuracy.TASKS["cnn"].grids["tensor"])
    assert set(chosen) == {"tensor", "global"}  # the evaluation seeds run the winner and the global-norm variant
    frontier = [s for s in rest if s.interval != 1 or s.inner_steps != 1 or s.start]
    assert {(s.norm, s.epsilon) for s in frontier} == {("tensor", chosen["tensor"])}
    assert {(s.interval, s.inner_steps, s.start) for s in frontier} == {(2, 1, 0), (4, 1, 0), (1, 2, 0), (1, 1, 0.5)}
    assert recommended == RunSpec("cnn", "amp", 0, epsilon=chosen["tensor"]).label()

    erm_errors = {0: 0.10, 1: 0.12, 2: 0.14}
    for s in done:
        if s.method == "erm" and s.seed in seeds:
            done[s] = _row(s, 0.1, erm_errors[s.seed], 10.0)
    for s in rest:  # the recommended run: 0.02 better than ERM on every seed, twice the time
        done[s] = _row(s, 0.1, erm_errors[s.seed] - 0.02, 15.0 if s.interval == 2 else 20.0)
    summary = summarise("cnn", seeds, done, (rest, recommended))
    tuning = summary["validation_error_at_tuning_seed"]
    assert set(tuning) == {"ERM", *(s.label() for s in grid)} and tuning["ERM"] == pytest.approx(0.10)
    best = summary["methods"][summary["recommended"]]
    assert best["paired_difference_mean"] == pytest.approx(-0.02)
    assert best["paired_difference_std"] == pytest.approx(0.0, abs=1e-12)
    assert best["relative_error_reduction"] == pytest.approx(0.02 / 0.12)
    assert best["wins_over_erm"] == 3
    assert best["time_vs_erm"] == pytest.approx(2.0)
    every_two = summary["frontier"][summary["recommended"] + ", every 2"]
    assert every_two["share_of_full_gain"] == pytest.approx(1.0)
    assert every_two["time_vs_erm"] == pytest.approx(1.5)
    passes = {label.split(", ")[-1]: point["passes_vs_erm"] for label, point in summary["frontier"].items()}
    assert passes == {"every 2": 1.5, "every 4": 1.25, "from 50%": 1.5, "K=2": 3.0, summary["recommended"]: 2.0}


def test_quick_study_runs_end_to_end(tmp_path):
    """The CI smoke run of the study on one task: real training, every code path, files written."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "accuracy.py"), "--quick", "--tasks", "cnn"]
    command += ["--out", str(tmp_path), "--cache", str(tmp_path / "runs.jsonl")]
    subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)
    report = json.loads((tmp_path / "accuracy.json").read_text())
    assert {"command", "versions", "machine"} <= set(report)
    assert report["runs_trained"] == len(report["runs"]) > 0  # a fresh cache: this invocation trained every run
    task = report["tasks"]["cnn"]
    assert task["recommended"] in task["methods"]
    for label, method in task["methods"].items():  # each mean is that of its own runs' test errors
        runs = {run["test_error"] for run in report["runs"] if run["label"] == label}
        assert method["test_errors"] and set(method["test_errors"]) <= runs, (label, method["test_errors"], runs)
        assert method["test_error_mean"] == pytest.approx(sum(method["test_errors"]) / len(method["test_errors"]))
    labels = {run["label"] for run in report["runs"]}
    assert "ERM" in labels and any(", every 4" in label for label in labels)
    errors = {run["label"]: run["test_error"] for run in report["runs"]}
    assert errors["ERM"] != errors["AMP tensor ε=0.5"]  # the defaults really perturbed the weights
    for name in ("accuracy.png", "frontier.png", "loss_curves.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_amp_holds_exactly_one_extra_copy_of_the_weights_at_its_peak():
    """cost.py's live-tensor peak: AMP K=1 over ERM is θ's saved copy; a Δ kept into the descent would make it ~2×."""
    from transformers import Trainer

    from amp_hf import AMPTrainer

    model, batch = cost.tiny_bert()
    model.train()
    erm = cost.tensor_peak_bytes(cost.make_trainer(Trainer, model), model, batch)
    amp = cost.tensor_peak_bytes(cost.make_trainer(AMPTrainer, model, amp_inner_steps=1), model, batch)
    assert (amp - erm) / cost.parameter_bytes(model) == pytest.approx(1.0, abs=0.02)
