"""The Trainer records a compared run itself: for a run that compare started (the environment variable
`AMP_HF_COMPARE_RUN` names its folder), `AMPMixin.__init__` adds `ComparisonRecorder`, which writes what compare reads
even when the script never calls `save_state()` / `save_metrics()`:

- `trainer_state.json` at the end of training (the TrainerState with its log history, best metric, best checkpoint
  and the train summary holding `train_runtime`), again after each later evaluation;
- `train_results.json` (the train summary the Trainer logged), and `<prefix>_results.json` for every evaluation or
  prediction after training (`trainer.evaluate(test, metric_key_prefix="test")` → `test_results.json`), as
  `save_metrics` would write them;
- `compare_run.json`: the training arguments that decide what the numbers mean (`load_best_model_at_end`,
  `metric_for_best_model`, `greater_is_better`, `seed`) and the AMP settings the run actually used.

A script that does call save_state / save_metrics writes the same files with the same contents; either order is fine.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .jsonfiles import write_json

RUN_ENVIRONMENT = "AMP_HF_COMPARE_RUN"
"""Set by compare for each run it starts: the run's folder."""
RUN_FILE = "compare_run.json"
RECORDED_ARGUMENTS = ("load_best_model_at_end", "metric_for_best_model", "greater_is_better", "seed", "output_dir")


def _prefix(metrics: dict[str, Any]) -> str | None:
    """The metric_key_prefix of an evaluation's metrics: every evaluate/predict adds `<prefix>_runtime`."""
    return next((key.removesuffix("_runtime") for key in metrics if key.endswith("_runtime")), None)


class ComparisonRecorder(TrainerCallback):
    """Writes a compared run's records into its folder (main process only); see the module docstring."""

    def __init__(self, folder: str | Path, trainer: Any) -> None:
        self.folder = Path(folder)
        self.trainer = trainer
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        if state.is_world_process_zero:
            config = getattr(self.trainer, "amp_config", None)
            write_json(
                self.folder / RUN_FILE,
                {
                    "training_args": {name: getattr(args, name, None) for name in RECORDED_ARGUMENTS},
                    "amp_config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
                },
            )

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        if state.is_world_process_zero:
            state.save_to_json(str(self.folder / "trainer_state.json"))
            summary = next((e for e in reversed(state.log_history) if "train_runtime" in e), None)
            if summary is not None:
                write_json(self.folder / "train_results.json", {k: v for k, v in summary.items() if k != "step"})

    def _after_training(self, state, metrics: dict[str, Any] | None) -> None:
        """An evaluation after training (a test split, the best checkpoint's validation): its `_results.json`."""
        if self.training or not metrics or not state.is_world_process_zero:
            return
        prefix = _prefix(metrics)
        if prefix:
            write_json(self.folder / f"{prefix}_results.json", metrics)
        state.save_to_json(str(self.folder / "trainer_state.json"))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._after_training(state, metrics)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._after_training(state, metrics)


def add_comparison_recorder(trainer: Any) -> None:
    """Adds the recorder to `trainer` when compare started this process (AMP_HF_COMPARE_RUN is set); else nothing."""
    folder = os.environ.get(RUN_ENVIRONMENT)
    if folder:
        trainer.add_callback(ComparisonRecorder(folder, trainer))
