"""amp_hf.compare.recording: an AMPTrainer started by compare (AMP_HF_COMPARE_RUN set) writes what compare reads,
without the script's save_state / save_metrics; without the variable it adds nothing. Only the trainer that trained
writes the state; the recorder holds its trainer weakly; a plain Trainer records with the callback; what a run cost
is measured without its evaluations and saves; `import amp_hf` does not import the compare package."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import weakref
from types import SimpleNamespace

import torch
from compare_script import MLP, Points, ScriptArguments, accuracy, train
from transformers import Trainer, TrainerCallback

from amp_hf import AMPTrainer, AMPTrainingArguments
from amp_hf.compare import RUN_ENVIRONMENT, ComparisonRecorder


def arguments(folder, **extra) -> AMPTrainingArguments:
    values = dict(num_train_epochs=2, per_device_train_batch_size=16, eval_strategy="epoch", save_strategy="no")
    return AMPTrainingArguments(
        output_dir=str(folder), report_to="none", use_cpu=True, disable_tqdm=True, amp_epsilon=0.05,
        **{**values, **extra},
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
    assert run["trainer"] == "AMPTrainer" and run["measured"]["optimizer"] == "AdamW"
    assert run["measured"]["memory_kind"] == "resident" and run["measured"]["train_seconds"] > 0
    assert not (tmp_path / "eval_validation_results.json").exists()  # evaluations during training: in the state


def test_nothing_is_added_outside_a_comparison(tmp_path, monkeypatch):
    monkeypatch.delenv(RUN_ENVIRONMENT, raising=False)
    trainer = train(ScriptArguments(test_evaluation=False), arguments(tmp_path, seed=0), save=False)
    assert not any(isinstance(c, ComparisonRecorder) for c in trainer.callback_handler.callbacks)
    assert not (tmp_path / "trainer_state.json").exists() and not (tmp_path / "compare_run.json").exists()


class SlowSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        time.sleep(0.3)


def test_training_time_leaves_out_evaluations_and_saves(tmp_path, monkeypatch):
    """Each evaluation sleeps 0.4 s and each save 0.3 s (3 epochs): train_runtime counts them, train_seconds not."""
    monkeypatch.setenv(RUN_ENVIRONMENT, str(tmp_path))

    def slow_accuracy(prediction):
        time.sleep(0.4)
        return accuracy(prediction)

    args = arguments(tmp_path, seed=0, num_train_epochs=3, save_strategy="epoch", save_only_model=True)
    data = dict(train_dataset=Points(64, 0, noisy=True), eval_dataset=Points(48, 1, noisy=True))
    trainer = AMPTrainer(model=MLP(), args=args, **data, compute_metrics=slow_accuracy, callbacks=[SlowSave()])
    started = time.perf_counter()
    runtime = trainer.train().metrics["train_runtime"]
    assert time.perf_counter() - started >= 3 * 0.7
    measured = json.loads((tmp_path / "compare_run.json").read_text())["measured"]
    assert 0 < measured["train_seconds"] <= runtime - 3 * 0.7 + 0.05


def test_an_evaluation_only_trainer_keeps_the_training_runs_state(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_ENVIRONMENT, str(tmp_path))
    trained = train(ScriptArguments(test_evaluation=False), arguments(tmp_path, seed=0), save=False)
    state = (tmp_path / "trainer_state.json").read_text()
    evaluator = AMPTrainer(
        model=trained.model, args=arguments(tmp_path / "eval", seed=0, eval_strategy="no"), compute_metrics=accuracy
    )
    evaluator.evaluate(Points(48, 2, noisy=False), metric_key_prefix="test")
    assert (tmp_path / "trainer_state.json").read_text() == state  # still the training run's
    assert "test_accuracy" in json.loads((tmp_path / "test_results.json").read_text())  # its evaluation is recorded
    assert json.loads((tmp_path / "compare_run.json").read_text())["trainer"] == "AMPTrainer"


def test_the_recorder_does_not_keep_its_trainer_alive(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_ENVIRONMENT, str(tmp_path))
    args = arguments(tmp_path, seed=0, eval_strategy="no")
    trainer = AMPTrainer(model=MLP(), args=args, train_dataset=Points(16, 0, noisy=False))
    recorder = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ComparisonRecorder))
    assert recorder.trainer is trainer
    alive = weakref.ref(trainer)
    del trainer
    assert alive() is None and recorder.trainer is None  # freed at once, without waiting for a cyclic collection


def test_a_plain_trainer_records_with_the_callback(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_ENVIRONMENT, str(tmp_path))
    trainer = Trainer(model=MLP(), args=arguments(tmp_path, seed=1), train_dataset=Points(32, 0, noisy=True),
                      eval_dataset=Points(16, 1, noisy=True), callbacks=[ComparisonRecorder()])  # fmt: skip
    trainer.train()
    run = json.loads((tmp_path / "compare_run.json").read_text())
    assert run["trainer"] is None and run["amp_config"] is None and run["training_args"]["seed"] == 1
    assert run["measured"]["optimizer"] == "AdamW" and (tmp_path / "trainer_state.json").is_file()
    mine = ComparisonRecorder()  # the callback given to an AMPTrainer too: bound to it, not doubled
    amp = AMPTrainer(model=MLP(), args=arguments(tmp_path, seed=1, eval_strategy="no"), callbacks=[mine])
    assert [c for c in amp.callback_handler.callbacks if isinstance(c, ComparisonRecorder)] == [mine]
    assert mine.trainer is amp
    monkeypatch.delenv(RUN_ENVIRONMENT)
    assert ComparisonRecorder().folder is None  # outside a comparison the callback records nothing


def test_importing_amp_hf_does_not_import_the_compare_package():
    code = "import amp_hf, sys; print('amp_hf.compare' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_each_other_process_of_a_run_writes_its_own_measurement(tmp_path):
    recorder = ComparisonRecorder(tmp_path)
    args, state = (
        SimpleNamespace(device=torch.device("cpu"), process_index=1),
        SimpleNamespace(is_world_process_zero=False),
    )
    recorder.on_train_begin(args, state, None, optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))
    recorder.on_train_end(args, state, None)
    assert [p.name for p in tmp_path.iterdir()] == ["compare_measured.process-1.json"]  # nothing else: main's files
    measured = json.loads((tmp_path / "compare_measured.process-1.json").read_text())
    assert measured["optimizer"] == "SGD" and measured["memory_kind"] == "resident"
