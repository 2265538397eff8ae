"""The Trainer records a compared run itself: for a run that compare started (the environment variable
`AMP_HF_COMPARE_RUN` names its folder), `AMPMixin.__init__` adds `ComparisonRecorder` (importing this package only
then), which writes what compare reads even when the script never calls `save_state()` / `save_metrics()`:

- `trainer_state.json` at the end of training (the TrainerState with its log history, best metric, best checkpoint
  and the train summary holding `train_runtime`), again after each later evaluation. Only by the trainer that
  trained: a second trainer built to evaluate (a test split) never replaces the training run's state;
- `train_results.json` (the train summary the Trainer logged), and `<prefix>_results.json` for every evaluation or
  prediction after training, by any trainer of the run (`trainer.evaluate(test, metric_key_prefix="test")` →
  `test_results.json`), as `save_metrics` would write them;
- `compare_run.json`: the training arguments that decide what the numbers mean (`load_best_model_at_end`,
  `metric_for_best_model`, `greater_is_better`, `seed`), the AMP settings the run actually used, the trainer's class,
  and what the run cost (`measured`: see `Measurement`); in a run of several processes, each other process writes what
  it measured to `compare_measured.process-<k>.json` (the run's peak memory is the largest).

A script that does call save_state / save_metrics writes the same files with the same contents; either order is fine.
A plain `transformers.Trainer` (an ERM baseline without AMP code) records the same with
`Trainer(..., callbacks=[ComparisonRecorder()])`: outside a comparison that callback does nothing.

The recorder holds only a weak reference to its trainer: `del trainer` frees the trainer, its model and its
optimizer at once, as without the recorder.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..trainer import COMPARE_RUN
from .jsonfiles import write_json

RUN_ENVIRONMENT = COMPARE_RUN
"""Set by compare for each run it starts: the run's folder."""
RUN_FILE = "compare_run.json"
PROCESS_FILE = "compare_measured.process-{}.json"
"""What each process but the main one measured in a run of several processes (its own device's peak memory)."""
RECORDED_ARGUMENTS = ("load_best_model_at_end", "metric_for_best_model", "greater_is_better", "seed", "output_dir")
ACCELERATOR, RESIDENT = "accelerator", "resident"
"""What `peak_memory_bytes` measures: the CUDA device's peak allocated memory, or the process's peak resident size."""


def _prefix(metrics: dict[str, Any]) -> str | None:
    """The metric_key_prefix of an evaluation's metrics: every evaluate/predict adds `<prefix>_runtime`."""
    return next((key.removesuffix("_runtime") for key in metrics if key.endswith("_runtime")), None)


def optimizer_name(optimizer: Any) -> str | None:
    """The class name of the optimizer that steps, under accelerate's or DeepSpeed's wrappers (`.optimizer`)."""
    for _ in range(5):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return type(optimizer).__name__ if optimizer is not None else None


def _peak_resident_bytes() -> int | None:
    """The process's peak resident set size so far (getrusage: KiB on Linux, bytes on macOS); None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class Measurement:
    """What a run cost, measured by the callbacks around the Trainer's own loop:

    - `train_seconds`: wall-clock time from the start of training to its summary, less the evaluations and checkpoint
      saves made during training (each timed from the event before it: the step's end, its loss log, the epoch's
      end, to `on_evaluate` / `on_save`). Data loading, the steps and their logging count; `train_runtime` also
      counts the evaluations and saves, which a comparison asks for every epoch, biasing its time ratios to 1.
    - `peak_memory_bytes`: on a CUDA device, `torch.cuda.max_memory_allocated` since training began (the peak is reset
      there; kind "accelerator"); else the process's peak resident size (kind "resident"), kept only when it rose
      during training: a peak set before (by an earlier run in the same process, as `compare(train_fn)` trains
      them) is not this run's, and is withheld (None).
    - `optimizer`: the class name of the optimizer that stepped.
    """

    def __init__(self) -> None:
        self.started = self.mark = time.perf_counter()
        self.paused = 0.0
        self.ended: float | None = None
        self.device: Any = None
        self.resident_before: int | None = None

    def begin(self, device: Any) -> None:
        self.device = device
        if self._cuda():
            import torch

            torch.cuda.reset_peak_memory_stats(device)
        else:
            self.resident_before = _peak_resident_bytes()
        self.started = self.mark = time.perf_counter()

    def _cuda(self) -> bool:
        return getattr(self.device, "type", None) == "cuda"

    def step(self) -> None:
        """A point where training was running: what follows until the next pause is not training."""
        self.mark = time.perf_counter()

    def pause(self) -> None:
        """An evaluation or a save just ended: the time since the last mark was not training."""
        now = time.perf_counter()
        self.paused += now - self.mark
        self.mark = now

    def end(self) -> None:
        if self.ended is None:
            self.ended = time.perf_counter()

    def to_dict(self, optimizer: str | None) -> dict[str, Any]:
        ended = self.ended if self.ended is not None else time.perf_counter()
        if self._cuda():
            import torch

            peak, kind = int(torch.cuda.max_memory_allocated(self.device)), ACCELERATOR
        else:
            peak, kind = _peak_resident_bytes(), RESIDENT
            if peak is not None and self.resident_before is not None and peak <= self.resident_before:
                peak = None  # the peak was reached before this training began
        return {
            "train_seconds": round(ended - self.started - self.paused, 4),
            "peak_memory_bytes": peak,
            "memory_kind": kind,
            "optimizer": optimizer,
        }


class ComparisonRecorder(TrainerCallback):
    """Writes a compared run's records into its folder (main process only); see the module docstring. `folder`
    defaults to the run folder compare names in the environment (none: the recorder does nothing)."""

    def __init__(self, folder: str | Path | None = None, trainer: Any = None) -> None:
        folder = folder if folder is not None else os.environ.get(RUN_ENVIRONMENT)
        self.folder = Path(folder) if folder else None
        self.trainer = trainer
        self.trained = False
        """Whether this recorder's trainer trained: only that one writes trainer_state.json."""
        self.training = False
        self.measurement = Measurement()
        self.optimizer: str | None = None

    @property
    def trainer(self) -> Any:
        """The trainer this recorder belongs to (None: unknown, or freed); held weakly."""
        return self._trainer() if self._trainer is not None else None

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self._trainer = weakref.ref(trainer) if trainer is not None else None

    def _records(self, state) -> bool:
        return self.folder is not None and state.is_world_process_zero

    def _write_run(self, args, measured: dict[str, Any] | None) -> None:
        trainer = self.trainer
        config = getattr(trainer, "amp_config", None)
        write_json(
            self.folder / RUN_FILE,
            {
                "training_args": {name: getattr(args, name, None) for name in RECORDED_ARGUMENTS},
                "amp_config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
                "trainer": type(trainer).__name__ if trainer is not None else None,
                "measured": measured,
            },
            sort_keys=True,
        )

    def _write_state(self, state) -> None:
        write_json(self.folder / "trainer_state.json", dataclasses.asdict(state), sort_keys=True)

    # ------------------------------------------------------------------------------------------- training
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.trained = self.training = True
        self.optimizer = optimizer_name(optimizer)
        self.measurement = Measurement()
        self.measurement.begin(args.device)
        if self._records(state):
            self._write_run(args, None)

    def on_step_end(self, args, state, control, **kwargs):
        self.measurement.step()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.measurement.step()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.training or not logs:
            return
        if "train_runtime" in logs:
            self.measurement.end()  # the train summary: training is over (loading the best checkpoint is not in it)
        elif _prefix(logs) is None:
            self.measurement.step()  # a training loss log; an evaluation's own log is part of the evaluation

    def on_save(self, args, state, control, **kwargs):
        if self.training:
            self.measurement.pause()

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        self.measurement.end()
        if self.folder is not None and not state.is_world_process_zero:  # its device's peak: the run's is the max
            process = getattr(args, "process_index", 0)
            write_json(self.folder / PROCESS_FILE.format(process), self.measurement.to_dict(self.optimizer))
        if self._records(state):
            self._write_run(args, self.measurement.to_dict(self.optimizer))
            self._write_state(state)
            summary = next((e for e in reversed(state.log_history) if "train_runtime" in e), None)
            if summary is not None:
                write_json(self.folder / "train_results.json", {k: v for k, v in summary.items() if k != "step"})

    # ------------------------------------------------------------------------------ evaluations and predictions
    def _evaluated(self, state, metrics: dict[str, Any] | None) -> None:
        if self.training:
            self.measurement.pause()
            return
        if not metrics or not self._records(state):
            return
        prefix = _prefix(metrics)  # an evaluation after training (a test split, the best checkpoint's validation)
        if prefix:
            write_json(self.folder / f"{prefix}_results.json", metrics, sort_keys=True)
        if self.trained:  # the state of a trainer that only evaluates is not the run's
            self._write_state(state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._evaluated(state, metrics)

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._evaluated(state, metrics)


def add_comparison_recorder(trainer: Any) -> None:
    """Adds the recorder to `trainer` when compare started this process (AMP_HF_COMPARE_RUN is set); one the script
    added itself is bound to this trainer instead of being doubled."""
    if not os.environ.get(RUN_ENVIRONMENT):
        return
    mine = [c for c in trainer.callback_handler.callbacks if isinstance(c, ComparisonRecorder)]
    if mine:
        for recorder in mine:
            recorder.trainer = trainer
    else:
        trainer.add_callback(ComparisonRecorder(trainer=trainer))
