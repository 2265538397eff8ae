"""amp_hf.compare's reading of run folders and its report, on run folders written here (no training): which value is
the headline and which the final, the source and early-stopping warnings, identical runs, the metric's direction
(never guessed), diverged runs, the family of verdicts, the time and cost, the units, and repeated looks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amp_hf.compare.candidates import CompareError, parse_candidates
from amp_hf.compare.rendering import console_lines, markdown
from amp_hf.compare.report import build_report
from amp_hf.compare.runs import DONE_FILE, RunRecord, run_folder

ARGS = {"load_best_model_at_end": True, "metric_for_best_model": "accuracy", "greater_is_better": True}


def write_run(root: Path, candidate: str, seed: int, evals: list[float], *, best_step: int | None, after=None,
              test=None, early=True, amp=None, metric="accuracy", args=None, runtime=None, measured=None,
              summary=None, done=None) -> RunRecord:  # fmt: skip
    """A run folder as the Trainer leaves it: eval_<metric> at steps 10, 20, ...; the train summary; optionally an
    evaluation after training (`after`, e.g. the best checkpoint's) and a test_results.json."""
    folder = run_folder(root, candidate, seed)
    folder.mkdir(parents=True)
    history = [{"step": 10 * (i + 1), f"eval_{metric}": v, "eval_loss": 1 - v} for i, v in enumerate(evals)]
    history.append(
        {"step": 10 * len(evals), "train_runtime": runtime or 2.0 + seed, "train_loss": 0.1, **(summary or {})}
    )
    if after is not None:
        history.append({"step": 10 * len(evals), f"eval_{metric}": after})
    best = None if best_step is None else max(evals)
    state = {
        "log_history": history,
        "best_metric": best,
        "best_global_step": best_step,
        "best_model_checkpoint": None if best_step is None else str(folder / f"checkpoint-{best_step}"),
    }
    (folder / "trainer_state.json").write_text(json.dumps(state))  # a NaN is written as the Trainer does: NaN
    args = {**ARGS, "load_best_model_at_end": early} if args is None else args
    recorded = {"training_args": args, "amp_config": amp, **({"measured": measured} if measured else {})}
    (folder / "compare_run.json").write_text(json.dumps(recorded))
    if done is not None:
        (folder / DONE_FILE).write_text(json.dumps(done))
    if test is not None:
        (folder / "test_results.json").write_text(json.dumps({f"test_{metric}": test, "test_runtime": 0.1}))
    return RunRecord.read(folder, candidate, seed)


def strict_json(path: Path) -> dict:
    """compare.json parsed with NaN / Infinity refused, as any strict JSON reader would."""

    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


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
    assert any("a verdict needs at least 3" in w for w in data["warnings"])
    x = data["candidates"][1]
    assert x["values"] == {"0": 0.7, "1": 0.71} and x["final"] is None
    d = x["difference"]
    assert d["mean"] == pytest.approx(0.105) and d["wins"] == 2 and d["verdict"] == "too few seeds"
    assert "mean_difference" not in x and "detectable" not in json.dumps(data)  # the statistics' own names
    assert x["time"]["ratio"] == pytest.approx(1.0)  # the same runtimes written for both


def test_test_split_identical_runs_and_a_setting_that_did_not_apply(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    records = {}
    for seed in (0, 1, 2):
        for name, amp in (("erm", {"inner_steps": 0}), ("x", {"epsilon": 0.5, "inner_steps": 1})):
            records[(name, seed)] = write_run(tmp_path, name, seed, [0.5, 0.6], best_step=20, test=0.55, amp=amp)
    data = build_report(candidates, [0, 1, 2], records, []).to_dict()
    x = data["candidates"][1]
    assert data["source"] == "test" and x["values"] == {"0": 0.55, "1": 0.55, "2": 0.55}
    d = x["difference"]
    assert d["mean"] == 0.0 and d["ci95"] == [0.0, 0.0] and d["p_value"] == 1.0 and d["verdict"] == "no evidence"
    assert x["final"] is None  # the runs have no test value of their final weights
    assert any("amp_epsilon=0.5 (asked 0.1)" in w for w in data["warnings"])


def test_a_setting_given_as_an_integer_applied_as_a_float_is_not_a_warning(tmp_path):
    """A JSON candidate's {"amp_inner_lr": 100} trains with the float field's 100.0: the same setting."""
    candidates = parse_candidates(['{"amp_inner_lr": 100, "amp_exclude": ["bias"]}'])
    records = {}
    for seed in (0, 1, 2):
        for name, amp in (("erm", {"inner_steps": 0}), (candidates[1].name, {"inner_lr": 100.0, "exclude": ["bias"]})):
            records[(name, seed)] = write_run(tmp_path, name, seed, [0.5, 0.6], best_step=20, test=0.55, amp=amp)
    assert not any("did not apply" in w for w in build_report(candidates, [0, 1, 2], records, []).warnings)


def test_a_metric_no_run_has_lists_what_they_have(tmp_path):
    records = {("erm", 0): write_run(tmp_path, "erm", 0, [0.5], best_step=10)}
    with pytest.raises(CompareError, match=r"--metric f1: no run recorded it.*eval_accuracy, eval_loss"):
        build_report(parse_candidates([]), [0], records, [], metric="f1")
    with pytest.raises(CompareError, match="no run finished"):
        build_report(parse_candidates([]), [0], {}, [{"candidate": "erm", "seed": 0, "reason": "it exited 1"}])


# ------------------------------------------------------------------------------------------------ the direction
def error_runs(root: Path, args: dict | None, metric: str = "error") -> dict:
    """ERM and x on seeds 0-3, x's error lower by 4-6 points on every seed; runs that did not early-stop."""
    records = {}
    for seed in range(4):
        base = 0.30 + seed / 100
        records[("erm", seed)] = write_run(root, "erm", seed, [base], best_step=None, early=False, metric=metric,
                                           args=args)  # fmt: skip
        records[("x", seed)] = write_run(root, "x", seed, [base - 0.04 - seed / 100], best_step=None, early=False,
                                         metric=metric, args=args)  # fmt: skip
    return records


def test_direction_of_an_error_comes_from_its_name_never_from_a_guess(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    no_direction = {"load_best_model_at_end": False}
    report = build_report(candidates, [0, 1, 2, 3], error_runs(tmp_path, no_direction), [], metric="error")
    assert report.greater_is_better is False and report.direction_source == "its name"
    assert report.candidate("x").headline.difference.verdict == "better"  # lowered on every seed: better, not worse
    assert report.units.name == "points"  # an error rate in [0, 1]
    accuracy = build_report(candidates, [0, 1, 2, 3], error_runs(tmp_path / "acc", no_direction, "acc"), [],
                            metric="acc", greater_is_better=True)  # fmt: skip
    assert accuracy.direction_source == "--greater_is_better"
    with pytest.raises(CompareError, match=r"--metric f1_macro: .*pass --greater_is_better"):
        build_report(candidates, [0, 1, 2, 3], error_runs(tmp_path / "f1", no_direction, "f1_macro"), [],
                     metric="f1_macro")  # fmt: skip


def test_runs_that_chose_checkpoints_with_higher_error_is_better_are_refused(tmp_path):
    """transformers sets greater_is_better=True for metric_for_best_model='wer': compare does not follow it."""
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    args = {"load_best_model_at_end": False, "metric_for_best_model": "wer", "greater_is_better": True}
    records = error_runs(tmp_path, args, "wer")
    with pytest.raises(CompareError, match=r"named like a lower-is-better metric.*--greater_is_better"):
        build_report(candidates, [0, 1, 2, 3], records, [])
    assert build_report(candidates, [0, 1, 2, 3], records, [], greater_is_better=False).greater_is_better is False


# ------------------------------------------------------------------------------------------ diverged, the family
def test_a_diverged_run_is_named_left_out_and_compare_json_stays_strict(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}', 'y={"amp_epsilon": 0.2}'])
    records = {}
    for seed in range(4):
        records[("erm", seed)] = write_run(tmp_path, "erm", seed, [0.5, 0.6], best_step=20, test=0.5 + seed / 50)
        x = float("nan") if seed == 1 else 0.55 + seed / 50
        records[("x", seed)] = write_run(tmp_path, "x", seed, [0.5, 0.6], best_step=20, test=x)
        y = float("inf") if seed == 3 else 0.5 + seed / 50
        records[("y", seed)] = write_run(tmp_path, "y", seed, [0.5, 0.6], best_step=20, test=y)
    report = build_report(candidates, [0, 1, 2, 3], records, [])
    x = report.candidate("x")
    assert x.headline.diverged == [1] and x.headline.difference.seeds == [0, 2, 3]
    assert x.headline.difference.excluded == [1] and x.headline.difference.n == 3
    assert any("diverged on 1 of 4 seeds" in note and "seed 1" in note for note in x.notes)
    assert any("diverged on 1 of 4 seeds" in line for line in console_lines(report))
    report.write(tmp_path / "out")
    data = strict_json(tmp_path / "out" / "compare.json")
    entry = data["candidates"][1]
    assert entry["values"]["1"] is None and entry["diverged"] == [1]
    assert entry["mean"] == pytest.approx((0.55 + 0.59 + 0.61) / 3)  # of the finite values
    assert "diverged on 1 of 4 seeds" in (tmp_path / "out" / "compare.md").read_text()


def test_the_family_is_every_verdict_of_the_report(tmp_path):
    """Two candidates at two baselines: four comparisons, Holm-adjusted together; the raw interval stays."""
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}', 'y={"amp_epsilon": 0.2}'])
    gain = {"erm": [0.0] * 3, "x": [0.010, 0.016, 0.020], "y": [0.010, -0.012, 0.003]}  # x alone: p ≈ 0.033
    records = {(n, s): write_run(tmp_path, n, s, [0.5, 0.6 + s / 100 + gain[n][s]], best_step=20)
               for n in gain for s in range(3)}  # fmt: skip
    report = build_report(candidates, [0, 1, 2], records, [])
    assert report.family_size == 4
    d = report.candidate("x").final.difference
    assert d.family_size == 4 and d.p_adjusted > d.p_value and d.ci95[0] > 0  # the raw interval excludes 0...
    assert d.verdict == "no evidence" and "Holm-adjusted over 4" in d.reason  # ...the family's verdict does not
    assert "p (Holm, m = 4)" in markdown(report, "")


# -------------------------------------------------------------------------------------------- time and cost
def test_time_ratio_is_a_ratio_of_means_of_train_seconds_with_the_spread_and_the_cost(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    records = {}
    for seed, (erm_s, x_s) in enumerate([(10.0, 30.0), (100.0, 120.0), (10.0, 12.0)]):
        for name, seconds in (("erm", erm_s), ("x", x_s)):
            measured = {
                "train_seconds": seconds,
                "peak_memory_bytes": 2**30 * (2 if name == "x" else 1),
                "memory_kind": "resident",
            }  # the recorder's measure, without the evaluations during training
            record = write_run(tmp_path, name, seed, [0.5, 0.6], best_step=20, test=0.5, runtime=seconds * 2,
                               measured=measured, summary={"train_samples_per_second": 500 / seconds},
                               done={"devices": ["0", "1"]})  # fmt: skip
            assert record.samples_per_second == pytest.approx(1000 / seconds)
            records[(name, seed)] = record
    report = build_report(candidates, [0, 1, 2], records, [])
    time = report.candidate("x").time
    assert time.ratio == pytest.approx(162 / 120)  # ratio of means, not the mean of 3, 1.2, 1.2 (= 1.8)
    assert time.ratio_per_seed == pytest.approx({0: 3.0, 1: 1.2, 2: 1.2}) and time.total == 162
    assert not any("train_runtime" in w for w in report.warnings)
    assert any("per-seed time ratios range from 1.20× to 3.00×" in w for w in report.warnings)
    cost = report.candidate("x").cost
    assert cost["train_seconds_total"] == 162 and cost["device_hours"] == pytest.approx(162 * 2 / 3600)
    assert cost["peak_memory_bytes"] == 2 * 2**30 and cost["memory_kind"] == "resident" and cost["devices"] == 2
    assert report.to_dict()["candidates"][1]["time"]["ratio_range"] == pytest.approx([1.2, 3.0])
    assert not any("estimates" in w for w in report.warnings)
    # without the recorder's measure: train_runtime less the logged evaluation runtimes, said to be an estimate
    plain = {k: write_run(tmp_path / "plain", *k, [0.5, 0.6], best_step=20, test=0.5) for k in records}
    report = build_report(candidates, [0, 1, 2], plain, [])
    assert any("6 of 6 runs' train_seconds are estimates" in w for w in report.warnings)
    assert report.candidate("x").cost["peak_memory_bytes"] is None  # not recorded: None, not a guess


# ------------------------------------------------------------------------------------------- the way it reads
def test_test_metric_named_with_its_prefix_is_labelled_test(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    records = {(n, s): write_run(tmp_path, n, s, [0.5, 0.6], best_step=20, test=0.5 + s / 10 + (n == "x") / 100)
               for n in ("erm", "x") for s in range(3)}  # fmt: skip
    report = build_report(candidates, [0, 1, 2], records, [], metric="test_accuracy")
    assert report.metric == "accuracy" and report.headline_label() == "test accuracy of the best-validation checkpoint"
    assert not any("no test split" in w for w in report.warnings)
    no_test = {
        (n, s): write_run(tmp_path / "v", n, s, [0.5, 0.6], best_step=20) for n in ("erm", "x") for s in range(3)
    }
    with pytest.raises(CompareError, match=r"--metric test_accuracy asks for the test split, but only 0 of 6"):
        build_report(candidates, [0, 1, 2], no_test, [], metric="test_accuracy")


def test_one_number_format_in_points_for_a_fraction(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    tests = {"erm": [0.5650, 0.5710, 0.5590], "x": [0.5780, 0.5790, 0.5770]}
    records = {(n, s): write_run(tmp_path, n, s, [0.5, 0.6], best_step=20, test=tests[n][s])
               for n in ("erm", "x") for s in range(3)}  # fmt: skip
    report = build_report(candidates, [0, 1, 2], records, [])
    assert report.units.name == "points" and report.units.decimals == 2  # spread of the differences ≈ 0.6 points
    d = report.candidate("x").headline.difference
    lines = console_lines(report)
    assert f"difference {100 * d.mean:+.2f} points" in lines[1]
    assert f"raw 95% CI [{100 * d.ci95[0]:+.2f}, {100 * d.ci95[1]:+.2f}]" in lines[1] and "wins 3/3" in lines[1]
    report.write(tmp_path / "out")
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "56.50 ± 0.60" in text and "percentage points" in text
    loss = build_report(candidates, [0, 1, 2], records, [], metric="loss")  # 1 − accuracy: not a fraction name
    assert loss.units.name == "" and loss.direction_source == "its name"


def test_console_lines_carry_the_warnings(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    records = {(n, s): write_run(tmp_path, n, s, [0.5, 0.6 + s / 10], best_step=None, early=False)
               for n in ("erm", "x") for s in range(3)}  # fmt: skip
    report = build_report(candidates, [0, 1, 2], records, [])
    lines = console_lines(report)
    head = "validation accuracy of the final weights (higher is better, per the runs' greater_is_better)"
    assert lines[0].startswith(head)
    assert lines[1].startswith("  x: no evidence") and "time 1.00× ERM" in lines[1]
    assert [line for line in lines if line.startswith("warning: ")] == [f"warning: {w}" for w in report.warnings]
    assert any("did not early-stop" in line for line in lines)


def test_merged_candidates_and_a_preset_outside_its_regime_are_noted_beside_the_verdict(tmp_path):
    candidates = parse_candidates(["finetune", "cnn_long_noisy", 'x={"amp_epsilon": 0.1}'])  # finetune is ERM
    assert [c.name for c in candidates] == ["erm", "cnn_long_noisy", "x"]
    measured = {"optimizer": "AdamW"}  # what the recorder writes: cnn_long_noisy was chosen with SGD + momentum
    records = {(n, s): write_run(tmp_path, n, s, [0.5, 0.6 + s / 10], best_step=None, early=False, measured=measured)
               for n in ("erm", "cnn_long_noisy", "x") for s in range(3)}  # fmt: skip
    report = build_report(candidates, [0, 1, 2], records, [])
    assert any("finetune" in note and "plain ERM" in note for note in report.candidate("erm").notes)
    assert any("AdamW" in note for note in report.candidate("cnn_long_noisy").notes)
    assert not report.candidate("x").notes  # a JSON candidate names no regime
    lines = console_lines(report)
    assert lines[1] == "  erm: baseline" and "finetune" in lines[2] and lines[2].startswith("      note: ")
    assert any(line.startswith("      note: cnn_long_noisy was chosen with SGD") for line in lines)


def test_repeated_looks_are_recorded_and_warned_about(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    gains = [0.02, 0.021, 0.019, 0.020, 0.022, 0.018]
    records = {}
    for s, gain in enumerate(gains):
        records[("erm", s)] = write_run(tmp_path, "erm", s, [0.5, 0.6], best_step=20, test=0.5 + s / 100)
        records[("x", s)] = write_run(tmp_path, "x", s, [0.5, 0.6], best_step=20, test=0.5 + s / 100 + gain)
    out = tmp_path / "out"
    first = build_report(candidates, [0, 1], records, [])
    first.write(out)
    assert not any("repeated looks" in w for w in first.warnings)
    again = build_report(candidates, [0, 1], records, [])
    again.write(out)  # the same look written again is not a new look
    assert len(strict_json(out / "compare.json")["looks"]) == 1
    later = build_report(candidates, list(range(6)), records, [])
    later.write(out)
    assert later.candidate("x").headline.difference.verdict == "better"
    looks = strict_json(out / "compare.json")["looks"]
    assert [look["n"] for look in looks] == [2, 6] and looks[0]["verdicts"]["x"]["headline"] == "too few seeds"
    assert any("repeated looks" in w and "n = 2; now 6" in w for w in later.warnings)
    assert "Looks at this comparison" in (out / "compare.md").read_text()


def test_an_equivalence_margin_in_the_metric_units(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    records = {(n, s): write_run(tmp_path, n, s, [0.5, 0.6], best_step=20, test=0.5 + s / 100 + (n == "x") * 1e-4 * s)
               for n in ("erm", "x") for s in range(4)}  # fmt: skip
    report = build_report(candidates, [0, 1, 2, 3], records, [], margin=0.01)
    assert report.candidate("x").headline.difference.verdict == "equivalent"
    with pytest.raises(CompareError, match=r"--margin 1 is in the metric's units: accuracy is a fraction"):
        build_report(candidates, [0, 1, 2, 3], records, [], margin=1.0)
    with pytest.raises(CompareError, match="--margin must be a positive number"):
        build_report(candidates, [0, 1, 2, 3], records, [], margin=-0.1)


def test_the_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    records = {(n, s): write_run(tmp_path / "runs-here", n, s, [0.5, 0.6 + s / 10], best_step=20, test=0.5 + s / 7)
               for n in ("erm", "x") for s in (0, 1)}  # fmt: skip
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}'])
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib now raises ImportError
    build_report(candidates, [0, 1], records, []).write(tmp_path / "out")
    assert not (tmp_path / "out" / "compare.png").exists()
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "Plot: skipped (matplotlib is not installed" in text and "| x | 1 |" in text  # the per-seed table


def test_a_candidate_without_finished_runs_is_listed_not_judged(tmp_path):
    candidates = parse_candidates(['x={"amp_epsilon": 0.1}', 'gone={"amp_epsilon": 0.2}'])
    records = {(n, s): write_run(tmp_path, n, s, [0.5, 0.6 + s / 10], best_step=20, test=0.5 + s / 10)
               for n in ("erm", "x") for s in range(3)}  # fmt: skip
    report = build_report(candidates, [0, 1, 2], records, [])
    gone = report.candidate("gone")
    assert gone.headline.values == {} and gone.headline.difference is None and report.family_size == 1
    assert any("gone has no finished run" in w for w in report.warnings)
    assert "| gone | — ± — | — | — | — | — | — | — | — | no finished run |" in markdown(report, "")
    assert not any(line.startswith("  gone:") for line in console_lines(report))
