"""amp_hf.compare.runs: reading run folders as the Trainer and the recorder leave them (no training here). A diverged
run's NaN / inf come back as numbers, never an error; a run that evaluates only once after training (`--do_train
--do_eval`, the example scripts' default) is compared on that evaluation; an ignored predict_results.json is named;
what a run cost; training_args.bin read without running it; the one place that names the splits."""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import pytest
import torch

from amp_hf import AMPTrainingArguments
from amp_hf.compare.candidates import parse_candidates
from amp_hf.compare.jsonfiles import write_json
from amp_hf.compare.report import build_report
from amp_hf.compare.runs import TEST, VALIDATION, RunRecord, run_folder, split_of


def _folder(root: Path, candidate: str, seed: int) -> Path:
    folder = run_folder(root, candidate, seed)
    folder.mkdir(parents=True)
    return folder


def test_a_diverged_runs_nan_and_inf_come_back_as_numbers(tmp_path):
    folder = _folder(tmp_path, "erm", 0)
    # as TrainerState.save_to_json writes it: bare NaN / Infinity tokens
    (folder / "trainer_state.json").write_text(
        '{"log_history": [{"step": 10, "eval_loss": 0.9}, {"step": 20, "eval_loss": NaN}, '
        '{"step": 20, "eval_test_loss": Infinity}, {"step": 20, "train_runtime": 3.0}], "best_metric": NaN, '
        '"best_global_step": 20, "best_model_checkpoint": "checkpoint-20"}'
    )
    (folder / "compare_run.json").write_text(
        json.dumps({"training_args": {"load_best_model_at_end": True, "metric_for_best_model": "loss"}})
    )
    record = RunRecord.read(folder, "erm", 0)
    best, final = record.values("loss", VALIDATION)
    assert math.isnan(best) and math.isnan(final)  # the last evaluation diverged: not the earlier 0.9
    assert record.values("loss", TEST) == (math.inf, math.inf)

    other = _folder(tmp_path, "erm", 1)  # as the recorder writes it: strict JSON, the numbers named
    history = [{"step": 10, "eval_loss": 0.5}, {"step": 20, "eval_loss": -math.inf}, {"step": 20, "train_runtime": 1}]
    write_json(other / "trainer_state.json", {"log_history": history, "best_model_checkpoint": None})
    write_json(other / "eval_results.json", {"eval_loss": math.nan, "eval_runtime": 0.1})
    record = RunRecord.read(other, "erm", 1)
    assert record.values("loss", VALIDATION)[0] != record.values("loss", VALIDATION)[0]  # NaN: after training
    assert record._series("eval_loss")[-1] == (20, -math.inf)


def _validation_only_run(root: Path, candidate: str, seed: int, accuracy: float) -> None:
    """What the example scripts leave with --do_train --do_eval and no eval_strategy: training losses, the train
    summary, then one evaluation after training (logged, and saved by save_metrics / the recorder)."""
    folder = _folder(root, candidate, seed)
    after = {"eval_loss": 1 - accuracy, "eval_accuracy": accuracy, "eval_runtime": 0.2, "epoch": 3.0}
    history = [{"step": 5, "loss": 1.2}, {"step": 10, "train_runtime": 8.0, "train_samples_per_second": 20.0},
               {"step": 10, **after}]  # fmt: skip
    write_json(folder / "trainer_state.json", {"log_history": history, "best_model_checkpoint": None})
    write_json(folder / "eval_results.json", after)
    write_json(folder / "predict_results.json", {"predict_runtime": 0.3, "predict_samples_per_second": 9.0})
    write_json(folder / "compare_run.json", {"training_args": {"load_best_model_at_end": False}, "amp_config": None})


def test_runs_that_evaluate_once_after_training_are_compared_on_that_evaluation(tmp_path):
    accuracies = {("erm", 0): 0.70, ("erm", 1): 0.72, ("erm", 2): 0.71}
    accuracies |= {("cnn_long_noisy", s): a + 0.02 for (_, s), a in accuracies.items()}
    for (candidate, seed), accuracy in accuracies.items():
        _validation_only_run(tmp_path, candidate, seed, accuracy)
    records = {key: RunRecord.read(run_folder(tmp_path, *key), *key) for key in accuracies}
    record = records[("erm", 0)]
    assert record.has_metric("accuracy") and record.has_metric("loss") and not record.has_test("accuracy")
    assert record.values("accuracy", VALIDATION) == (0.70, None)
    assert "eval_accuracy" in record.recorded_metrics() and "predict_runtime" not in record.recorded_metrics()
    assert list(record.ignored_results) == ["predict_results.json"]
    assert "holds no metric" in record.ignored_results["predict_results.json"]
    candidates = parse_candidates(["cnn_long_noisy"])
    for metric, greater in (("accuracy", True), ("loss", False), (None, False)):  # None: the default, loss
        report = build_report(candidates, [0, 1, 2], records, [], metric, greater)
        assert report.source == VALIDATION and report.candidate("erm").headline.values[1] == pytest.approx(
            1 - 0.72 if metric != "accuracy" else 0.72
        )


def test_what_a_run_cost(tmp_path):
    folder = _folder(tmp_path, "erm", 0)
    history = [{"step": 5, "eval_loss": 0.5, "eval_runtime": 1.5}, {"step": 10, "eval_loss": 0.4, "eval_runtime": 1.0},
               {"step": 10, "train_runtime": 10.0, "train_samples_per_second": 16.0}]  # fmt: skip
    write_json(folder / "trainer_state.json", {"log_history": history})
    record = RunRecord.read(folder, "erm", 0)
    assert record.train_seconds == 7.5 and record.train_seconds_estimated  # without the evaluations' runtimes
    assert record.samples_per_second == pytest.approx(160 / 7.5)
    assert (record.peak_memory_bytes, record.memory_kind, record.optimizer) == (None, "", None)
    assert (record.devices, record.attempts) == (1, 1)
    measured = {"train_seconds": 6.0, "peak_memory_bytes": 2**30, "memory_kind": "accelerator", "optimizer": "SGD"}
    write_json(folder / "compare_run.json", {"training_args": {}, "measured": measured, "trainer": "AMPTrainer"})
    write_json(folder / "compare_done.json", {"seed": 0, "devices": ["0", "1"], "attempts": 2})
    record = RunRecord.read(folder, "erm", 0)
    assert record.train_seconds == 6.0 and not record.train_seconds_estimated
    assert record.samples_per_second == pytest.approx(160 / 6.0)
    assert (record.peak_memory_bytes, record.memory_kind, record.optimizer) == (2**30, "accelerator", "SGD")
    assert (record.devices, record.attempts, record.trainer_class) == (2, 2, "AMPTrainer")
    write_json(folder / "compare_measured.process-1.json", {**measured, "peak_memory_bytes": 3 * 2**30})
    assert RunRecord.read(folder, "erm", 0).peak_memory_bytes == 3 * 2**30  # the largest over the processes


class ScriptArguments(AMPTrainingArguments):
    """A script's own subclass, which an allow-list of classes could not name."""


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_training_args_bin_is_read_without_running_it(tmp_path, monkeypatch):
    folder = _folder(tmp_path, "erm", 0)
    write_json(folder / "trainer_state.json", {"log_history": []})
    strategies = dict(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True)
    args = ScriptArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **strategies,
                           metric_for_best_model="f1", seed=7)  # fmt: skip
    torch.save(args, folder / "training_args.bin")
    record = RunRecord.read(folder, "erm", 0)
    assert record.training_args == {"load_best_model_at_end": True, "metric_for_best_model": "f1",
                                    "greater_is_better": True, "seed": 7, "output_dir": str(tmp_path)}  # fmt: skip

    monkeypatch.chdir(tmp_path)
    hostile = _folder(tmp_path, "erm", 1)
    write_json(hostile / "trainer_state.json", {"log_history": []})
    torch.save(Payload(), hostile / "training_args.bin")  # a file that runs a command when unpickled
    assert b"system" in zipfile.ZipFile(hostile / "training_args.bin").read("training_args/data.pkl")
    assert RunRecord.read(hostile, "erm", 1).training_args is None
    assert not (tmp_path / "PWNED").exists()  # never executed


def test_the_split_a_metric_name_gives():
    assert split_of("test_accuracy") == (TEST, "accuracy") == split_of("eval_test_accuracy")
    assert split_of("eval_accuracy") == (VALIDATION, "accuracy") == split_of("eval_validation_accuracy")
    assert split_of("accuracy") == (None, "accuracy") and split_of("test_") == (None, "test_")
