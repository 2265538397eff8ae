"""Run folders and what the Trainer wrote in them: compare's runs live in `<output_dir>/runs/<candidate>/seed-<seed>/`.

What a run folder holds, and where each number comes from:

- `trainer_state.json` (`trainer.save_state()`, or the recorder): `log_history` (every logged evaluation, and the
  train summary with `train_runtime`), `best_metric`, `best_model_checkpoint`, `best_global_step`;
- `<prefix>_results.json` (`trainer.save_metrics(prefix, metrics)`, or the recorder): an evaluation after training,
  e.g. `test_results.json` with `test_<metric>` (with load_best_model_at_end, the best checkpoint's value);
- `compare_run.json` (the recorder) or `training_args.bin` (the Trainer's checkpoints): whether the run
  early-stopped (`load_best_model_at_end`), `metric_for_best_model`, `greater_is_better`;
- `compare_done.json`, written by compare only after the run succeeded: the exact command, settings and seed.

The values (see `run_values`): a run's *headline* value is its test split's metric when it has one, else its
validation metric; for an early-stopping run that is the best checkpoint's, and its *final* value is the last
evaluation during training (the final weights'). A test split is found as `test_results.json` (an evaluation after
training) or, for a dict eval_dataset {"validation": ..., "test": ...}, as the `eval_test_<metric>` the Trainer logs at
every evaluation (best = at the best validation step, final = the last).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .candidates import CompareError
from .identity import changes
from .jsonfiles import read_json
from .recording import RUN_FILE

DONE_FILE = "compare_done.json"
LOG_FILE = "compare.log"
TEST, VALIDATION = "test", "validation"
_SPEED = re.compile(r"(_runtime|_samples_per_second|_steps_per_second|_model_preparation_time|_jit_compilation_time)$")


def run_folder(output_dir: Path, candidate: str, seed: int) -> Path:
    return Path(output_dir) / "runs" / candidate / f"seed-{seed}"


def read_done(folder: Path) -> dict[str, Any] | None:
    """The done-marker of a finished run, None when the run did not finish (never started, killed, failed)."""
    done = read_json(folder / DONE_FILE)
    return done if isinstance(done, dict) else None


def check_done_matches(done: Mapping[str, Any], identity: Mapping[str, Any], folder: Path) -> None:
    """A finished run is reused only when everything that determines its result is what a new run would have (the
    command or train function, the code and configuration files it names, the working directory, the libraries'
    versions, the settings and the seed: `identity.changes`). Otherwise the comparison is refused, naming what changed,
    before anything trains: never mixed in, and never deleted (the change may not matter to the user; hours of runs
    are theirs to drop)."""
    found = changes(done, identity)
    if found:
        raise CompareError(
            f"{', '.join(found)} since {folder.parent.name} {folder.name} was trained ({folder}), so its numbers would "
            "not be comparable with new runs. Train the comparison again with another --output_dir (these runs stay "
            f"as they are), or delete {folder.parent.parent} to train it again here"
        )


def _training_args(folder: Path) -> dict[str, Any] | None:
    """The run's deciding training arguments: the recorder's file, else the Trainer's own training_args.bin."""
    recorded = read_json(folder / RUN_FILE)
    if isinstance(recorded, dict) and isinstance(recorded.get("training_args"), dict):
        return recorded["training_args"]
    for path in [folder / "training_args.bin", *sorted(folder.glob("checkpoint-*/training_args.bin"))]:
        if path.is_file():
            try:
                import torch

                args = torch.load(path, weights_only=False)  # the run's own file, written by its Trainer
                return {
                    k: getattr(args, k, None)
                    for k in ("load_best_model_at_end", "metric_for_best_model", "greater_is_better", "seed")
                }
            except Exception:
                continue
    return None


@dataclass
class RunRecord:
    """What one finished run wrote, as read from its folder."""

    candidate: str
    seed: int
    folder: Path
    state: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """{prefix: metrics} of every `<prefix>_results.json` but all_results.json."""
    training_args: dict[str, Any] | None = None
    amp_config: dict[str, Any] | None = None

    @classmethod
    def read(cls, folder: Path, candidate: str, seed: int) -> RunRecord:
        state = read_json(folder / "trainer_state.json")
        if not isinstance(state, dict):
            raise CompareError(
                f"{folder} has no trainer_state.json: the run finished but neither the script (trainer.save_state()) "
                "nor compare's recorder (an AMPTrainer started by compare) wrote it"
            )
        results = {}
        for path in sorted(folder.glob("*_results.json")):
            prefix = path.name.removesuffix("_results.json")
            value = read_json(path)
            if prefix != "all" and isinstance(value, dict):
                results[prefix] = value
        recorded = read_json(folder / RUN_FILE)
        amp = recorded.get("amp_config") if isinstance(recorded, dict) else None
        return cls(candidate, seed, folder, state, results, _training_args(folder), amp)

    # ------------------------------------------------------------------------------------------------ the history
    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.state.get("log_history") or [])

    @property
    def training_history(self) -> list[dict[str, Any]]:
        """The log entries up to the train summary: evaluations after training (a best checkpoint re-evaluated) are
        not the final weights'."""
        history = self.history
        end = next((i for i, e in enumerate(history) if "train_runtime" in e), len(history))
        return history[:end]

    @property
    def runtime(self) -> float | None:
        summary = next((e for e in self.history if "train_runtime" in e), None)
        if summary is None:
            summary = self.results.get("train", {})
        value = summary.get("train_runtime")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def best_step(self) -> int | None:
        step = self.state.get("best_global_step")
        if isinstance(step, int):
            return step
        match = re.search(r"checkpoint-(\d+)", str(self.state.get("best_model_checkpoint") or ""))
        return int(match.group(1)) if match else None

    @property
    def metric_for_best_model(self) -> str | None:
        name = (self.training_args or {}).get("metric_for_best_model")
        return name.removeprefix("eval_") if isinstance(name, str) else None

    @property
    def early_stopping(self) -> bool:
        """Whether the run ended on its best checkpoint (load_best_model_at_end, and a best checkpoint was kept)."""
        loads_best = bool((self.training_args or {}).get("load_best_model_at_end"))
        return loads_best and self.state.get("best_model_checkpoint") is not None

    def recorded_metrics(self) -> list[str]:
        """Every metric key the run logged or saved (speed counters left out), for an error that lists them."""
        keys = {k for e in self.history for k in e if k.startswith("eval_")}
        keys |= {k for metrics in self.results.values() for k in metrics if k != "epoch"}
        return sorted(k for k in keys if not _SPEED.search(k))

    # ---------------------------------------------------------------------------------------------- the numbers
    def _series(self, key: str) -> list[tuple[int | None, float]]:
        return [(e.get("step"), float(e[key])) for e in self.training_history if isinstance(e.get(key), (int, float))]

    def validation_key(self, metric: str) -> str | None:
        """The logged key of the validation metric: metric_for_best_model's when it is this metric (dict eval
        datasets: `eval_validation_accuracy` for metric 'accuracy'), else eval_<metric>, else eval_<name>_<metric>."""
        keys = {k for e in self.training_history for k in e}
        chosen = self.metric_for_best_model
        if chosen and (chosen == metric or chosen.endswith("_" + metric)) and f"eval_{chosen}" in keys:
            return f"eval_{chosen}"
        if f"eval_{metric}" in keys:
            return f"eval_{metric}"
        return next(
            (
                k
                for k in sorted(keys)
                if k.endswith("_" + metric) and k.startswith("eval_") and k != f"eval_test_{metric}"
            ),
            None,
        )

    def has_test(self, metric: str) -> bool:
        return f"test_{metric}" in self.results.get("test", {}) or bool(self._series(f"eval_test_{metric}"))

    def has_metric(self, metric: str) -> bool:
        return self.has_test(metric) or self.validation_key(metric) is not None

    def _at_best(self, series: list[tuple[int | None, float]]) -> float | None:
        best = self.best_step
        return next((v for step, v in reversed(series) if step == best), None) if best is not None else None

    def values(self, metric: str, source: str) -> tuple[float | None, float | None]:
        """(headline, final) of `metric` from `source` ('test' / 'validation'). Early-stopping runs: headline = the
        best checkpoint's value, final = the last evaluation during training. Other runs: headline = the final
        weights' value, final = None (there is only one model)."""
        if source == TEST:
            after = self.results.get("test", {}).get(f"test_{metric}")
            series = self._series(f"eval_test_{metric}")
        else:
            after = self.results.get("eval", {}).get(f"eval_{metric}")
            key = self.validation_key(metric)
            series = self._series(key) if key else []
        last = series[-1][1] if series else None
        if not self.early_stopping:
            return (float(after) if isinstance(after, (int, float)) else last), None
        best = None
        if source == VALIDATION and self.validation_key(metric) == f"eval_{self.metric_for_best_model}":
            best = self.state.get("best_metric")
        if not isinstance(best, (int, float)):
            best = after if isinstance(after, (int, float)) else self._at_best(series)
        return (float(best) if best is not None else None), last


def choose_source(records: Sequence[RunRecord], metric: str) -> str:
    """'test' when every run has the test split's metric, else 'validation'."""
    return TEST if records and all(r.has_test(metric) for r in records) else VALIDATION
