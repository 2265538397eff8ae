"""amp_hf.compare.recording: an AMPTrainer started by compare (AMP_HF_COMPARE_RUN set) writes what compare reads,
without the script's save_state / save_metrics; without the variable it adds nothing."""

from __future__ import annotations

import json

from compare_script import ScriptArguments, train

from amp_hf import AMPTrainingArguments
from amp_hf.compare import RUN_ENVIRONMENT, ComparisonRecorder


def arguments(folder, **extra) -> AMPTrainingArguments:
    return AMPTrainingArguments(
        output_dir=str(folder), num_train_epochs=2, per_device_train_batch_size=16, eval_strategy="epoch",
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, amp_epsilon=0.05, **extra,
    )  # fmt: skip


def test_the_trainer_records_a_compared_run(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_ENVIRONMENT, str(tmp_path))
    trainer = train(ScriptArguments(test_evaluation=True), arguments(tmp_path, seed=3), save=False)
    assert sum(isinstance(c, ComparisonRecorder) for c in trainer.callback_handler.callbacks) == 1
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == trainer.state.global_step == 8
    evaluations = [e for e in state["log_history"] if "eval_validation_loss" in e]
    assert len(evaluations) == 2  # one per epoch
    summary = json.loads((tmp_path / "train_results.json").read_text())
    assert summary["train_runtime"] > 0 and "train_loss" in summary
    test = json.loads((tmp_path / "test_results.json").read_text())  # the evaluation after training
    assert test["test_loss"] == next(e["test_loss"] for e in state["log_history"] if "test_loss" in e)
    run = json.loads((tmp_path / "compare_run.json").read_text())
    assert run["training_args"]["seed"] == 3 and run["training_args"]["load_best_model_at_end"] is False
    assert run["amp_config"]["epsilon"] == 0.05 and run["amp_config"]["inner_steps"] == 1
    assert not (tmp_path / "eval_validation_results.json").exists()  # evaluations during training: in the state


def test_nothing_is_added_outside_a_comparison(tmp_path, monkeypatch):
    monkeypatch.delenv(RUN_ENVIRONMENT, raising=False)
    trainer = train(ScriptArguments(test_evaluation=False), arguments(tmp_path, seed=0), save=False)
    assert not any(isinstance(c, ComparisonRecorder) for c in trainer.callback_handler.callbacks)
    assert not (tmp_path / "trainer_state.json").exists() and not (tmp_path / "compare_run.json").exists()
