"""Run folders and what the Trainer wrote in them: compare's runs live in `<output_dir>/runs/<candidate>/seed-<seed>/`.

What a run folder holds, and where each number comes from:

- `trainer_state.json` (`trainer.save_state()`, or the recorder): `log_history` (every logged evaluation, the train
  summary with `train_runtime`, and the evaluations after training), `best_metric`, `best_model_checkpoint`,
  `best_global_step`;
- `<prefix>_results.json` (`trainer.save_metrics(prefix, metrics)`, or the recorder): an evaluation after training,
  e.g. `test_results.json` with `test_<metric>` (with load_best_model_at_end, the best checkpoint's value), or
  `eval_results.json` with `eval_<metric>` (the example scripts' `--do_eval`: one evaluation after training);
- `compare_run.json` (the recorder) or `training_args.bin` (the Trainer's checkpoints, read without running it:
  `saved_arguments`): whether the run early-stopped (`load_best_model_at_end`), `metric_for_best_model`,
  `greater_is_better`; and (the recorder) what the run cost: `measured`;
- `compare_done.json`, written by compare only after the run succeeded: the run's identity (`identity.py`), and the
  devices and attempts it took.

The values (`RunRecord.values`): a run's *headline* value is its test split's metric when every run has one, else
its validation metric; for an early-stopping run that is the best checkpoint's, and its *final* value is the last
evaluation during training (the final weights'). A test split is found as `test_results.json` (an evaluation after
training) or, for a dict eval_dataset {"validation": ..., "test": ...}, as the `eval_test_<metric>` the Trainer logs at
every evaluation (best = at the best validation step, final = the last). A run that evaluates only once, after
training (`--do_train --do_eval` without an eval_strategy), is compared on that evaluation. Numbers are read as
floats, a diverged run's NaN and ±inf included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .candidates import CompareError
from .identity import changes
from .jsonfiles import number, read_json
from .recording import PROCESS_FILE, RECORDED_ARGUMENTS, RUN_FILE
from .saved_arguments import read_saved_arguments

DONE_FILE = "compare_done.json"
LOG_FILE = "compare.log"
TEST, VALIDATION = "test", "validation"
"""The two splits a compared value comes from (`RunRecord.values`' source), named here only: `split_of` reads a
user's metric name, `RunRecord.values` reads each split's value."""
READ_PREFIXES = ("train", "eval", "test", "all")
"""The `<prefix>_results.json` files compare reads (all_results.json repeats the others); any other (the example
scripts' predict_results.json) is named by `RunRecord.ignored_results`."""
_SPEED = re.compile(r"(_runtime|_samples_per_second|_steps_per_second|_model_preparation_time|_jit_compilation_time)$")


def split_of(name: str) -> tuple[str | None, str]:
    """(split, metric) of a metric name as a user may give it: `test_accuracy` and `eval_test_accuracy` name the test
    split, `eval_accuracy` and `eval_validation_accuracy` the validation split, `accuracy` none (compare chooses)."""
    for prefix, split in (
        ("eval_test_", TEST),
        ("test_", TEST),
        ("eval_validation_", VALIDATION),
        ("eval_", VALIDATION),
    ):
        if name.startswith(prefix) and len(name) > len(prefix):
            return split, name[len(prefix) :]
    return None, name


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


def _training_args(folder: Path, recorded: Any) -> dict[str, Any] | None:
    """The run's deciding training arguments: the recorder's file, else the Trainer's own training_args.bin (read
    without running anything in it: `saved_arguments`)."""
    if isinstance(recorded, dict) and isinstance(recorded.get("training_args"), dict):
        return recorded["training_args"]
    for path in [folder / "training_args.bin", *sorted(folder.glob("checkpoint-*/training_args.bin"))]:
        if path.is_file():
            values = read_saved_arguments(path, RECORDED_ARGUMENTS)
            if values is not None:
                return values
    return None


@dataclass
class RunRecord:
    """What one finished run wrote, as read from its folder. Numbers come back as floats, a diverged run's NaN and
    ±inf included (never an error): the report judges them."""

    candidate: str
    seed: int
    folder: Path
    state: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """{prefix: metrics} of every `<prefix>_results.json` but all_results.json."""
    training_args: dict[str, Any] | None = None
    amp_config: dict[str, Any] | None = None
    recorded: dict[str, Any] = field(default_factory=dict)
    """compare_run.json, as the recorder wrote it ({} without the recorder)."""
    done: dict[str, Any] = field(default_factory=dict)
    """compare_done.json, the done-marker ({} when not there)."""
    processes: list[dict[str, Any]] = field(default_factory=list)
    """What the other processes of a run of several measured (`recording.PROCESS_FILE`)."""

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
        recorded = recorded if isinstance(recorded, dict) else {}
        amp = recorded.get("amp_config")
        processes = [read_json(path) for path in sorted(folder.glob(PROCESS_FILE.format("*")))]
        return cls(
            candidate, seed, folder, state, results, _training_args(folder, recorded), amp, recorded,
            read_done(folder) or {}, [p for p in processes if isinstance(p, dict)],
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------ the history
    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.state.get("log_history") or [])

    def _summary_index(self) -> int:
        history = self.history
        return next((i for i, e in enumerate(history) if "train_runtime" in e), len(history))

    @property
    def training_history(self) -> list[dict[str, Any]]:
        """The log entries up to the train summary: evaluations after training (a best checkpoint re-evaluated) are
        not the final weights'."""
        return self.history[: self._summary_index()]

    @property
    def after_training(self) -> list[dict[str, Any]]:
        """The log entries after the train summary: evaluations after training (`--do_eval` in the example scripts,
        the best checkpoint re-evaluated)."""
        return self.history[self._summary_index() + 1 :]

    @property
    def summary(self) -> dict[str, Any]:
        """The train summary the Trainer logged (train_runtime, train_samples_per_second, ...), {} if none."""
        found = next((e for e in self.history if "train_runtime" in e), None)
        return found if found is not None else dict(self.results.get("train", {}))

    @property
    def runtime(self) -> float | None:
        return number(self.summary.get("train_runtime"))

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
        keys = {k for e in self.history for k in e if k.startswith(("eval_", "test_"))}
        keys |= {k for prefix, metrics in self.results.items() if prefix in READ_PREFIXES for k in metrics}
        return sorted(k for k in keys if k != "epoch" and not _SPEED.search(k))

    @property
    def ignored_results(self) -> dict[str, str]:
        """{file: why} of the `<prefix>_results.json` files compare does not read, for the report to name: the example
        scripts' `--do_predict` writes predict_results.json, whose labels they drop (so it holds no metric)."""
        out = {}
        for prefix, metrics in self.results.items():
            if prefix in READ_PREFIXES or prefix.startswith("eval_"):
                continue
            held = sorted(k for k in metrics if k != "epoch" and not _SPEED.search(k))
            what = f"holds {', '.join(held)}" if held else "holds no metric, only speed counters (no labels)"
            out[f"{prefix}_results.json"] = (
                f"{what}; compare reads a test split from test_results.json (evaluate it with its labels: "
                "trainer.evaluate(test, metric_key_prefix='test'))"
            )
        return out

    # ---------------------------------------------------------------------------------------------- the cost
    @property
    def measured(self) -> dict[str, Any]:
        value = self.recorded.get("measured")
        return value if isinstance(value, dict) else {}

    @property
    def train_seconds(self) -> float | None:
        """Training time without the evaluations and checkpoint saves made during training: the recorder's
        measurement, else train_runtime less the runtimes of the evaluations logged during training (an estimate:
        the saves stay in; `train_seconds_estimated`)."""
        measured = number(self.measured.get("train_seconds"))
        if measured is not None:
            return measured
        runtime = self.runtime
        if runtime is None:
            return None
        evaluations = [number(v) for e in self.training_history for k, v in e.items() if k.endswith("_runtime")]
        return runtime - sum(v for v in evaluations if v is not None)

    @property
    def train_seconds_estimated(self) -> bool:
        return number(self.measured.get("train_seconds")) is None

    @property
    def samples_per_second(self) -> float | None:
        """Training samples per second of `train_seconds` (the samples: the summary's rate × train_runtime)."""
        rate, runtime, seconds = (
            number(self.summary.get("train_samples_per_second")),
            self.runtime,
            self.train_seconds,
        )
        if rate is None or runtime is None or not seconds or seconds <= 0:
            return None
        return rate * runtime / seconds

    @property
    def peak_memory_bytes(self) -> int | None:
        """The largest peak over the run's processes (the main one's `measured` and the others' files), each on its
        own device; None when the main process recorded none."""
        kind = self.measured.get("memory_kind")
        peaks = [
            number(m.get("peak_memory_bytes")) for m in [self.measured, *self.processes] if m.get("memory_kind") == kind
        ]
        if not peaks or peaks[0] is None:
            return None
        return int(max(p for p in peaks if p is not None and p == p))

    @property
    def memory_kind(self) -> str:
        """ "accelerator" (CUDA's peak allocated memory), "resident" (the process's peak RSS), "" when not recorded."""
        kind = self.measured.get("memory_kind")
        return kind if isinstance(kind, str) and self.peak_memory_bytes is not None else ""

    @property
    def optimizer(self) -> str | None:
        name = self.measured.get("optimizer")
        return name if isinstance(name, str) else None

    @property
    def trainer_class(self) -> str | None:
        """The class of the trainer that trained (None: not recorded, or a plain Trainer with the callback)."""
        name = self.recorded.get("trainer")
        return name if isinstance(name, str) else None

    @property
    def devices(self) -> int:
        """How many devices the run used (the done-marker's "devices" list), 1 when not recorded."""
        devices = self.done.get("devices")
        if isinstance(devices, list):
            return max(1, len(devices))
        return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1

    @property
    def attempts(self) -> int:
        """How many times the run was started before it finished (the done-marker's "attempts"), 1 when not recorded."""
        attempts = self.done.get("attempts")
        return attempts if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts > 0 else 1

    # ---------------------------------------------------------------------------------------------- the numbers
    @staticmethod
    def _series_of(entries: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int | None, float]]:
        values = [(e.get("step"), number(e.get(key))) for e in entries]
        return [(step, value) for step, value in values if value is not None]

    def _series(self, key: str) -> list[tuple[int | None, float]]:
        return self._series_of(self.training_history, key)

    def validation_key(self, metric: str) -> str | None:
        """The logged key of the validation metric during training: metric_for_best_model's when it is this metric
        (dict eval datasets: `eval_validation_accuracy` for metric 'accuracy'), else eval_<metric>, else
        eval_<name>_<metric>."""
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

    def validation_after(self, metric: str) -> float | None:
        """The validation metric of the evaluation after training: eval_results.json (`--do_eval` in the example
        scripts, which evaluate once after training without an eval_strategy; or the recorder's), else the last
        such evaluation logged after the train summary."""
        saved = number(self.results.get("eval", {}).get(f"eval_{metric}"))
        if saved is not None:
            return saved
        series = self._series_of(self.after_training, f"eval_{metric}")
        return series[-1][1] if series else None

    def test_after(self, metric: str) -> float | None:
        """The test metric of the evaluation after training: test_results.json, else the last `test_<metric>` logged
        after the train summary (a script that saved its state after evaluating the test split)."""
        saved = number(self.results.get("test", {}).get(f"test_{metric}"))
        if saved is not None:
            return saved
        series = self._series_of(self.after_training, f"test_{metric}")
        return series[-1][1] if series else None

    def has_test(self, metric: str) -> bool:
        return self.test_after(metric) is not None or bool(self._series(f"eval_test_{metric}"))

    def has_validation(self, metric: str) -> bool:
        return self.validation_key(metric) is not None or self.validation_after(metric) is not None

    def has_metric(self, metric: str) -> bool:
        return self.has_test(metric) or self.has_validation(metric)

    def _at_best(self, series: list[tuple[int | None, float]]) -> float | None:
        best = self.best_step
        return next((v for step, v in reversed(series) if step == best), None) if best is not None else None

    def values(self, metric: str, source: str) -> tuple[float | None, float | None]:
        """(headline, final) of `metric` from `source` ('test' / 'validation'). Early-stopping runs: headline = the
        best checkpoint's value, final = the last evaluation during training. Other runs: headline = the final
        weights' value (an evaluation after training, else the last during training), final = None (there is only
        one model). A diverged run's value is NaN or ±inf, as the Trainer wrote it."""
        if source == TEST:
            after = self.test_after(metric)
            series = self._series(f"eval_test_{metric}")
        else:
            after = self.validation_after(metric)
            key = self.validation_key(metric)
            series = self._series(key) if key else []
        last = series[-1][1] if series else None
        if not self.early_stopping:
            return (after if after is not None else last), None
        best = None
        if source == VALIDATION and self.validation_key(metric) == f"eval_{self.metric_for_best_model}":
            best = number(self.state.get("best_metric"))
        if best is None:
            best = after if after is not None else self._at_best(series)
        return best, last


def choose_source(records: Sequence[RunRecord], metric: str) -> str:
    """'test' when every run has the test split's metric, else 'validation'."""
    return TEST if records and all(r.has_test(metric) for r in records) else VALIDATION
