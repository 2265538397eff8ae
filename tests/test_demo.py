"""The demo on tiny sizes: its training script writes what compare reads, its data is paired across candidates, and
`examples/demo.py` runs ERM against the preset through compare and reports both baselines."""

import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import demo  # noqa: E402
import demo_train  # noqa: E402

from amp_hf.tasks.data import mnist_5k_tensors  # noqa: E402

TINY = ["--train_size", "64", "--val_size", "32", "--test_size", "64"]


def labels(rows: torch.utils.data.Dataset) -> torch.Tensor:
    return torch.stack([rows[i]["labels"] for i in range(len(rows))])


def test_training_script_evaluates_validation_and_test_every_epoch_and_saves_the_best_checkpoints_test_error(tmp_path):
    argv = [*TINY, "--output_dir", str(tmp_path), "--seed", "5", "--num_train_epochs", "3", "--amp_inner_steps", "0"]
    argv += demo.RECIPE  # the demo's own recipe: evaluation, checkpoints, best model
    metrics = demo_train.main(argv)
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    history = state["log_history"]
    validation = [e for e in history if "eval_validation_error" in e]  # one log entry per evaluated split
    test = {e["step"]: e["eval_test_error"] for e in history if "eval_test_error" in e}
    assert [e["epoch"] for e in validation] == [1.0, 2.0, 3.0] and sorted(test) == [e["step"] for e in validation]
    best = next(e for e in validation if e["step"] == state["best_global_step"])
    assert state["best_metric"] == best["eval_validation_error"] == min(e["eval_validation_error"] for e in validation)
    assert test[best["step"]] != test[max(test)]  # seed 5: the best epoch is not the last, so the check below bites
    saved = json.loads((tmp_path / "test_results.json").read_text())
    assert saved["test_error"] == metrics["test_error"] == test[best["step"]]  # the best checkpoint was loaded
    assert 0 <= saved["test_error"] <= 100


def test_the_seed_draws_the_wrong_labels_of_training_and_validation_never_of_test():
    args = demo_train.DemoDataArguments(data="mnist", train_size=500, val_size=200, test_size=300)
    a, again, other = demo_train.splits(args, 0), demo_train.splits(args, 0), demo_train.splits(args, 1)
    clean_train, clean_val, clean_test = (rows["labels"] for rows in mnist_5k_tensors())
    for name, clean, n in (("train", clean_train, 500), ("validation", clean_val, 200)):
        assert labels(a[name]).equal(labels(again[name]))  # ERM and AMP of a seed: the same wrong labels
        assert not labels(a[name]).equal(labels(other[name]))
        assert int((labels(a[name]) != clean[:n]).sum()) == round(0.2 * n)  # exactly a fifth wrong
    assert labels(a["test"]).equal(clean_test[:300]) and labels(other["test"]).equal(clean_test[:300])


@pytest.mark.parametrize(("flag", "value"), [("--noise_rate", "1.5"), ("--val_size", "0"), ("--train_size", "2001")])
def test_training_script_refuses_bad_data_arguments_naming_the_flag(tmp_path, flag, value):
    with pytest.raises(ValueError, match=flag):
        demo_train.main(["--output_dir", str(tmp_path), flag, value])


def test_training_script_refuses_unknown_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo_train.main(["--output_dir", str(tmp_path), "--data", "cifar"])
    assert "--data" in capsys.readouterr().err


def test_demo_runs_erm_against_the_preset_through_compare_and_reports_both_baselines(tmp_path, capsys):
    argv = [*TINY, "--epochs", "2", "--seeds", "0", "1", "--out", str(tmp_path)]
    results = demo.main(argv)
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["erm_test_error"] == results["erm_test_error"] and saved["preset"] == "cnn_long_noisy"
    report = json.loads((tmp_path / "compare.json").read_text())
    by_name = {c["name"]: c for c in report["candidates"]}
    amp = by_name["cnn_long_noisy"]
    assert saved["amp_test_error"] == round(sum(amp["values"].values()) / 2, 2)  # best checkpoint, mean of 2 seeds
    assert saved["amp_final_test_error"] == round(sum(amp["final"]["values"].values()) / 2, 2)
    for method in ("ERM", "AMP"):
        assert sorted(saved["runs"][method]) == ["0", "1"]
        assert all(len(run["test_error_per_epoch"]) == 2 for run in saved["runs"][method].values())
    assert (tmp_path / "demo.png").stat().st_size > 0 and (tmp_path / "compare.md").is_file()
    printed = capsys.readouterr().out
    assert "best-validation checkpoint" in printed and "final weights" in printed and "final training loss" in printed
