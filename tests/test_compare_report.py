"""amp_hf.compare's reading of run folders and its report, on run folders written here (no training): which value is
the headline and which the final, the source and early-stopping warnings, and identical runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amp_hf.compare.candidates import CompareError, parse_candidates
from amp_hf.compare.report import build_report
from amp_hf.compare.runs import RunRecord, run_folder


def write_run(root: Path, candidate: str, seed: int, evals: list[float], *, best_step: int | None, after=None,
              test=None, early=True, amp=None) -> RunRecord:  # fmt: skip
    """A run folder as the Trainer leaves it: eval_accuracy at steps 10, 20, ...; the train summary; optionally an
    evaluation after training (`after`, e.g. the best checkpoint's) and a test_results.json."""
    folder = run_folder(root, candidate, seed)
    folder.mkdir(parents=True)
    history = [{"step": 10 * (i + 1), "eval_accuracy": v, "eval_loss": 1 - v} for i, v in enumerate(evals)]
    history.append({"step": 10 * len(evals), "train_runtime": 2.0 + seed, "train_loss": 0.1})
    if after is not None:
        history.append({"step": 10 * len(evals), "eval_accuracy": after})
    best = None if best_step is None else max(evals)
    state = {
        "log_history": history,
        "best_metric": best,
        "best_global_step": best_step,
        "best_model_checkpoint": None if best_step is None else str(folder / f"checkpoint-{best_step}"),
    }
    (folder / "trainer_state.json").write_text(json.dumps(state))
    args = {"load_best_model_at_end": early, "metric_for_best_model": "accuracy", "greater_is_better": True}
    (folder / "compare_run.json").write_text(json.dumps({"training_args": args, "amp_config": amp}))
    if test is not None:
        (folder / "test_results.json").write_text(json.dumps({"test_accuracy": test, "test_runtime": 0.1}))
    return RunRecord.read(folder, candidate, seed)


def test_validation_headline_is_the_best_checkpoint_and_final_the_last_training_evaluation(tmp_path):
    record = write_run(tmp_path, "erm", 0, [0.5, 0.8, 0.7], best_step=20, after=0.8)
    assert record.values("accuracy", "validation") == (0.8, 0.7)  # the evaluation after training is not "final"
    assert record.runtime == 2.0 and record.early_stopping and not record.has_test("accuracy")
    assert record.values("loss", "validation") == (pytest.approx(0.2), pytest.approx(0.3))  # at the best step
    plain = write_run(tmp_path, "erm", 1, [0.5, 0.8, 0.7], best_step=None, early=False)
    assert plain.values("accuracy", "validation") == (0.7, None)  # one model: the final weights'


def test_report_warns_on_validation_numbers_and_runs_that_did_not_early_stop(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    records = {}
    for seed in (0, 1):
        records[("erm", seed)] = write_run(tmp_path, "erm", seed, [0.5, 0.6], best_step=None, early=False)
        records[("x", seed)] = write_run(tmp_path, "x", seed, [0.5, 0.7 + seed / 100], best_step=None, early=False)
    report = build_report(candidates, [0, 1], records, [])
    data = report.to_dict()
    assert data["source"] == "validation" and data["early_stopping"] is False and data["greater_is_better"] is True
    assert any("no test split" in w for w in data["warnings"])
    assert any("did not early-stop" in w and "load_best_model_at_end" in w for w in data["warnings"])
    x = data["candidates"][1]
    assert x["values"] == {"0": 0.7, "1": 0.71} and x["final"] is None
    assert x["mean_difference"] == pytest.approx(0.105) and x["wins"] == 2
    assert x["time_ratio"] == pytest.approx(1.0)  # the same runtimes written for both


def test_test_split_identical_runs_and_a_setting_that_did_not_apply(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    records = {}
    for seed in (0, 1, 2):
        for name, amp in (("erm", {"inner_steps": 0}), ("x", {"epsilon": 0.5, "inner_steps": 1})):
            records[(name, seed)] = write_run(tmp_path, name, seed, [0.5, 0.6], best_step=20, test=0.55, amp=amp)
    data = build_report(candidates, [0, 1, 2], records, []).to_dict()
    x = data["candidates"][1]
    assert data["source"] == "test" and x["values"] == {"0": 0.55, "1": 0.55, "2": 0.55}
    assert x["mean_difference"] == 0.0 and x["ci95"] == [0.0, 0.0] and x["verdict"] == "no evidence"
    assert x["final"] is None  # the runs have no test value of their final weights
    assert any("amp_epsilon=0.5 (asked 0.1)" in w for w in data["warnings"])


def test_a_setting_given_as_an_integer_applied_as_a_float_is_not_a_warning(tmp_path):
    """A JSON candidate's {"amp_inner_lr": 100} trains with the float field's 100.0: the same setting."""
    candidates = parse_candidates(['{"amp_inner_lr": 100, "amp_exclude": ["bias"]}'])
    records = {}
    for seed in (0, 1):
        for name, amp in (("erm", {"inner_steps": 0}), (candidates[1].name, {"inner_lr": 100.0, "exclude": ["bias"]})):
            records[(name, seed)] = write_run(tmp_path, name, seed, [0.5, 0.6], best_step=20, test=0.55, amp=amp)
    assert build_report(candidates, [0, 1], records, []).to_dict()["warnings"] == []


def test_a_metric_no_run_has_lists_what_they_have(tmp_path):
    records = {("erm", 0): write_run(tmp_path, "erm", 0, [0.5], best_step=10)}
    with pytest.raises(CompareError, match=r"--metric f1: no run recorded it.*eval_accuracy, eval_loss"):
        build_report(parse_candidates([]), [0], records, [], metric="f1")
    with pytest.raises(CompareError, match="no run finished"):
        build_report(parse_candidates([]), [0], {}, [{"candidate": "erm", "seed": 0, "reason": "it exited 1"}])


def test_the_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    records = {(n, s): write_run(tmp_path / "runs-here", n, s, [0.5, 0.6 + s / 10], best_step=20, test=0.5 + s / 7)
               for n in ("erm", "x") for s in (0, 1)}  # fmt: skip
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib now raises ImportError
    build_report(candidates, [0, 1], records, []).write(tmp_path / "out")
    assert not (tmp_path / "out" / "compare.png").exists()
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "Plot: skipped (matplotlib is not installed" in text and "| x | 1 |" in text  # the per-seed table
