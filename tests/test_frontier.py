"""The cheap-AMP frontier study's pure parts: shares of full AMP's cut, the time and share goals, the choice rule on
validation errors (never on test errors). Synthetic runs; no training here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import frontier  # noqa: E402
from transfer import Spec  # noqa: E402

TASK = frontier.SELECT


def row(method: str, seed: int, final_test: float, final_val: float, cpu: float) -> dict:
    """A cached run's fields that the frontier reads (best-validation numbers equal the final ones here)."""
    return {
        "task": TASK, "method": method, "seed": seed, "test_error": final_test, "final_test_error": final_test,
        "val_error": final_val, "final_val_error": final_val, "final_train_loss": 0.1, "final_train_error": 0.0,
        "best_epoch": 1, "train_seconds": cpu, "train_cpu_seconds": cpu, "amp_skipped": 0, "data": {},
    }  # fmt: skip


def runs(results: dict[str, tuple[float, float, float]]) -> dict[Spec, dict]:
    """{method name: (final test error, final validation error, CPU seconds)} on seeds 0-2, seed s adding s/1000."""
    methods = {m.name: m for m in (frontier.ERM, frontier.FULL, *frontier.CHEAP)}
    return {
        Spec(TASK, methods[name], seed): row(name, seed, test + seed / 1000, val + seed / 1000, cpu)
        for name, (test, val, cpu) in results.items()
        for seed in frontier.SEEDS
    }


BASE = {"ERM": (0.10, 0.30, 100.0), "AMP defaults": (0.04, 0.24, 200.0)}


def test_shares_of_the_full_cut_and_the_goal():
    done = runs({**BASE, "f=0.25": (0.052, 0.25, 125.0), "every 2": (0.04, 0.24, 150.0)})
    summary = frontier.frontier(done, TASK, frontier.CHEAP)
    rows = summary["methods"]
    assert rows["f=0.25"]["share_of_full_cut"] == pytest.approx(0.8)  # (10 − 5.2) / (10 − 4)
    assert rows["f=0.25"]["share_of_full_val_cut"] == pytest.approx(5 / 6)
    assert rows["f=0.25"]["cpu_time_vs_erm"] == pytest.approx(1.25)
    assert rows["f=0.25"]["meets_goal"] and not rows["every 2"]["meets_goal"]  # every 2: full cut, but 1.5x time
    assert rows["f=0.25"]["passes_vs_erm"] == pytest.approx(1.25)
    assert "from 50%" not in rows  # methods without runs are left out
    assert summary["full_amp_relative_cut_final"] == pytest.approx(0.6, abs=0.01)


def test_choice_uses_validation_errors_and_the_time_goal():
    # f=0.125 has the lowest TEST error, but f=0.25 the lowest validation error: validation decides
    done = runs({
        **BASE,
        "f=0.25": (0.060, 0.241, 125.0),
        "f=0.125": (0.045, 0.245, 115.0),
        "every 2": (0.040, 0.240, 150.0),  # the best of all, but too slow
    })  # fmt: skip
    choice = frontier.choose(frontier.frontier(done, TASK, frontier.CHEAP))
    assert choice["chosen"] == "f=0.25"
    assert choice["qualifying"] == ["f=0.125", "f=0.25"] and "every 2" not in choice["fast_enough"]


def test_no_choice_when_no_cheap_setting_keeps_enough_of_the_cut():
    done = runs({**BASE, "f=0.25": (0.09, 0.29, 125.0), "every 4": (0.08, 0.28, 124.0)})
    choice = frontier.choose(frontier.frontier(done, TASK, frontier.CHEAP))
    assert choice["chosen"] is None and choice["closest"] == "every 4"


def test_report_renders_without_a_choice(tmp_path):
    done = runs({**BASE, "f=0.25": (0.09, 0.29, 125.0)})
    report = {"selection": {"task": TASK, **frontier.frontier(done, TASK, frontier.CHEAP)}, "choice": {"chosen": None}}
    text = frontier.markdown(report)
    assert "| f=0.25 | 9.10 ± 0.10 |" in text and "share of full cut" in text
    frontier.plot(report, tmp_path)
    assert (tmp_path / "frontier_long.png").stat().st_size > 0
