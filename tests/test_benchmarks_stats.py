"""benchmarks.stats: paired statistics, shares of full AMP's cut, and the choice rules, which read validation errors
only (never test errors). Synthetic runs; no training here."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.methods import DEFAULTS, ERM, REFERENCE, amp
from benchmarks.runner import Spec
from benchmarks.stats import (
    choose_candidate,
    choose_cheap,
    choose_cheapest_keeping_cut,
    cut_shares,
    paired_family,
    paired_stats,
    share_of_cut,
)

TASK = "cnn_mnist_noisy_long"
SEEDS = (0, 1, 2)
CHEAP = (
    amp("f=0.25", ascent_fraction=0.25, **REFERENCE),
    amp("f=0.125", ascent_fraction=0.125, **REFERENCE),
    amp("every 2", interval=2, **REFERENCE),
    amp("every 4", interval=4, **REFERENCE),
)


def test_choice_recommends_the_best_only_if_it_beats_erm_on_every_tuning_seed():
    errors = {
        "ERM": {1000: 0.20, 1001: 0.22},
        "a": {1000: 0.18, 1001: 0.21},
        "b": {1000: 0.19, 1001: 0.215},
    }
    c = choose_candidate(errors)
    assert c["best"] == "a" and c["recommended"] == "a" and c["beats_erm_on_every_tuning_seed"]
    # The best mean, but worse than ERM on one seed: ERM is recommended; the best still is reported.
    errors["a"] = {1000: 0.15, 1001: 0.225}
    c = choose_candidate(errors)
    assert c["best"] == "a" and c["recommended"] == "ERM" and not c["beats_erm_on_every_tuning_seed"]
    # A tie with ERM on a seed is not a win.
    assert choose_candidate({"ERM": {0: 0.2, 1: 0.2}, "a": {0: 0.2, 1: 0.1}})["recommended"] == "ERM"
    # ERM the best of all: the best AMP candidate is still named (it runs on the held-out tasks).
    c = choose_candidate({"ERM": {0: 0.1, 1: 0.1}, "a": {0: 0.3, 1: 0.3}, "b": {0: 0.2, 1: 0.2}})
    assert c["best"] == "b" and c["recommended"] == "ERM"


def test_paired_statistics_use_the_library_verdict():
    p = paired_stats({0: 0.20, 1: 0.22, 2: 0.21}, {0: 0.18, 1: 0.21, 2: 0.22})
    assert p["differences"] == pytest.approx([-0.02, -0.01, 0.01])
    assert p["mean"] == pytest.approx(-0.02 / 3)
    assert p["std"] == pytest.approx(np.std([-0.02, -0.01, 0.01], ddof=1))
    assert p["wins"] == 2 and p["verdict"] == "no evidence" and "within_noise" not in p
    assert p["relative_change"] == pytest.approx((-0.02 / 3) / 0.21)
    p = paired_stats({0: 0.2, 1: 0.2, 2: 0.2}, {0: 0.1, 1: 0.11, 2: 0.12, 3: 0.5})  # seed 3 has no ERM pair
    assert p["seeds"] == [0, 1, 2] and p["wins"] == 3 and p["verdict"] == "better"  # errors: lower is better
    # |mean| > std, which the old "within noise" rule called a result, but the 95% interval [-2.72, +0.12] points
    # contains 0 (issue 30's README row: -1.30 ± 0.57 points on 3 seeds): no evidence
    p = paired_stats({0: 0.20, 1: 0.20, 2: 0.20}, {0: 0.2 - 0.0130 - 0.0057, 1: 0.2 - 0.0130 + 0.0057, 2: 0.187})
    assert abs(p["mean"]) > p["std"] and p["ci95"] == pytest.approx([-0.0272, 0.0012], abs=2e-4)
    assert p["verdict"] == "no evidence"
    assert paired_stats({0: 0.2, 1: 0.2}, {0: 0.1, 1: 0.11})["verdict"] == "too few seeds"
    assert paired_stats({0: 0.2}, {0: 0.1})["std"] == 0.0  # the reports' "mean ± std" cells always have a number


def test_a_study_judges_its_comparisons_as_one_family():
    erm = {0: 0.0, 1: 0.0, 2: 0.0}
    lone = (erm, {0: -0.010, 1: -0.016, 2: -0.020})  # alone: p ≈ 0.033, better
    null = (erm, {0: 0.010, 1: -0.012, 2: 0.003})
    assert paired_stats(*lone)["verdict"] == "better"
    judged = paired_family({"a": lone, "b": null, "c": null})
    assert judged["a"]["verdict"] == "no evidence" and judged["a"]["family_size"] == 3
    assert judged["a"]["p_adjusted"] == pytest.approx(3 * judged["a"]["p_value"])


def test_share_of_cut():
    assert share_of_cut(0.10, 0.04, 0.052) == pytest.approx(0.8)
    assert share_of_cut(0.10, 0.04, 0.12) == pytest.approx(-1 / 3)  # worse than ERM: a negative share
    assert share_of_cut(0.10, 0.10, 0.05) is None and share_of_cut(0.10, 0.12, 0.05) is None  # full AMP cut nothing


def row(method: str, seed: int, final_test: float, final_val: float, cpu: float) -> dict:
    """A recorded run's fields that the summaries read (best-validation numbers equal the final ones here)."""
    return {
        "task": TASK, "method": method, "seed": seed, "test_error": final_test, "final_test_error": final_test,
        "val_error": final_val, "final_val_error": final_val, "final_train_loss": 0.1, "final_train_error": 0.0,
        "best_epoch": 1, "train_seconds": cpu, "train_cpu_seconds": cpu, "amp_skipped": 0, "data": {},
    }  # fmt: skip


def runs(results: dict[str, tuple[float, float, float]]) -> dict[Spec, dict]:
    """{method name: (final test error, final validation error, CPU seconds)} on seeds 0-2, seed s adding s/1000."""
    methods = {m.name: m for m in (ERM, DEFAULTS, *CHEAP)}
    return {
        Spec(TASK, methods[name], seed): row(name, seed, test + seed / 1000, val + seed / 1000, cpu)
        for name, (test, val, cpu) in results.items()
        for seed in SEEDS
    }


BASE = {"ERM": (0.10, 0.30, 100.0), "AMP defaults": (0.04, 0.24, 200.0)}


def shares(done: dict[Spec, dict]) -> dict:
    return cut_shares(done, TASK, CHEAP, DEFAULTS, SEEDS, headline_best_val=False)


def test_shares_of_the_full_cut_and_the_goal():
    summary = shares(runs({**BASE, "f=0.25": (0.052, 0.25, 125.0), "every 2": (0.04, 0.24, 150.0)}))
    rows = summary["methods"]
    assert rows["f=0.25"]["share_of_full_cut"] == pytest.approx(0.8)  # (10 − 5.2) / (10 − 4)
    assert rows["f=0.25"]["share_of_full_val_cut"] == pytest.approx(5 / 6)
    assert rows["f=0.25"]["cpu_time_vs_erm"] == pytest.approx(1.25)
    assert rows["f=0.25"]["meets_goal"] and not rows["every 2"]["meets_goal"]  # every 2: full cut, but 1.5x time
    assert rows["f=0.25"]["passes_vs_erm"] == pytest.approx(1.25)
    assert "every 4" not in rows  # methods without runs are left out
    assert summary["full_amp_relative_cut_final"] == pytest.approx(0.6, abs=0.01)
    # every method at both baselines is one family: 2 methods with runs beyond the defaults, + the defaults, × 2
    assert rows["f=0.25"]["paired"]["family_size"] == 6 and rows["f=0.25"]["paired_final"]["family_size"] == 6
    assert rows["f=0.25"]["paired"]["verdict"] == "no evidence"  # equal differences on every seed: sign-flip p = 0.25


def test_cheap_choice_uses_validation_errors_and_the_time_goal():
    # f=0.125 has the lowest TEST error, but f=0.25 the lowest validation error: validation decides
    summary = shares(runs({
        **BASE,
        "f=0.25": (0.060, 0.241, 125.0),
        "f=0.125": (0.045, 0.245, 115.0),
        "every 2": (0.040, 0.240, 150.0),  # the best of all, but too slow
    }))  # fmt: skip
    choice = choose_cheap(summary["methods"], [m.name for m in CHEAP])
    assert choice["chosen"] == "f=0.25"
    assert choice["qualifying"] == ["f=0.125", "f=0.25"] and "every 2" not in choice["fast_enough"]


def test_cheap_choice_at_a_tighter_time_goal_on_best_validation_checkpoints():
    """The cost-frontier study's rule: <= 1.15x ERM's time, and the cut and the error are the best-validation
    checkpoints' (here the final weights of f=0.125 look best, its best checkpoint does not)."""
    done = runs(
        {**BASE, "f=0.25": (0.05, 0.25, 125.0), "f=0.125": (0.05, 0.245, 112.0), "every 4": (0.05, 0.25, 110.0)}
    )
    for spec, record in done.items():
        if spec.method.name == "f=0.125":
            record["val_error"] = 0.26 + spec.seed / 1000  # share of the val cut at the best checkpoint: 4/6
    rows = cut_shares(done, TASK, CHEAP, DEFAULTS, SEEDS, headline_best_val=True, time_goal=1.15)["methods"]
    assert rows["f=0.125"]["share_of_full_val_cut_bv"] == pytest.approx(4 / 6)
    assert rows["every 4"]["share_of_full_val_cut_bv"] == pytest.approx(5 / 6)
    assert not rows["f=0.25"]["meets_goal"] and rows["every 4"]["meets_goal"]  # 1.25x is over 1.15x
    names = [m.name for m in CHEAP]
    assert choose_cheap(rows, names)["chosen"] == "f=0.125"  # the default rule: final weights, <= 1.3x
    choice = choose_cheap(rows, names, time_goal=1.15, best_val=True)
    assert choice["chosen"] == "every 4" and choice["fast_enough"] == ["every 4", "f=0.125"]


def test_no_cheap_choice_when_no_setting_keeps_enough_of_the_cut():
    summary = shares(runs({**BASE, "f=0.25": (0.09, 0.29, 125.0), "every 4": (0.08, 0.28, 124.0)}))
    choice = choose_cheap(summary["methods"], [m.name for m in CHEAP])
    assert choice["chosen"] is None and choice["closest"] == "every 4"


def test_cheapest_variant_only_once_full_amp_beats_erm_on_every_seed():
    variants = {
        "full": {"share_of_full_val_cut": 1.0, "time_vs_erm": 2.0},
        "f=0.25": {"share_of_full_val_cut": 0.9, "time_vs_erm": 1.3},
        "every 4": {"share_of_full_val_cut": 0.5, "time_vs_erm": 1.2},  # cheapest, but keeps too little
    }
    erm = {0: 0.3, 1: 0.3, 2: 0.3}
    assert choose_cheapest_keeping_cut(erm, {0: 0.2, 1: 0.2, 2: 0.2}, variants) == "f=0.25"
    assert choose_cheapest_keeping_cut(erm, {0: 0.2, 1: 0.2, 2: 0.31}, variants) is None  # lost one seed
    assert choose_cheapest_keeping_cut(erm, {}, variants) is None
