"""Where an attempt runs: in a thread of this process (`LocalExecutor`, the default: the attempt starts the user's
command as a local process), or handed to an existing job engine (`SubmitExecutor`): submitit's `AutoExecutor` (one
SLURM job per run where SLURM is present, its local executor elsewhere) or any object with the `concurrent.futures`
shape `submit(fn) -> job` whose `job.result()` waits for fn's result and `job.cancel()` stops it (the interface a Ray
executor would implement; none is written here). compare writes no scheduler of its own: it only decides which runs
to ask for, locks them and marks them done.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .attempt import AttemptResult
from .candidates import CompareError

EXECUTORS = ("local", "submitit")
SUBMITIT_FOLDER = "submitit"
"""Under the output folder: submitit's pickles and job logs (each run's own log stays in its run folder)."""


class Attempt(Protocol):
    def __call__(self) -> AttemptResult: ...

    def stop(self) -> None: ...


class Executor(Protocol):
    """Runs one attempt and waits for its result; `stop_all` ends every attempt in flight."""

    remote: bool
    """True when attempts run elsewhere (cluster nodes): devices are then the engine's to give, not compare's."""

    def run(self, attempt: Attempt) -> AttemptResult: ...

    def stop_all(self) -> None: ...


class LocalExecutor:
    """Each attempt in the calling thread (compare's workers): a command becomes a local process group."""

    remote = False

    def __init__(self) -> None:
        self._live: set[Any] = set()
        self._guard = threading.Lock()

    def run(self, attempt: Attempt) -> AttemptResult:
        with self._guard:
            self._live.add(attempt)
        try:
            return attempt()
        finally:
            with self._guard:
                self._live.discard(attempt)

    def stop_all(self) -> None:
        with self._guard:
            live = list(self._live)
        for attempt in live:
            attempt.stop()


class SubmitExecutor:
    """Hands each attempt to an engine with `submit(fn)`: submitit's AutoExecutor, a concurrent.futures executor.
    A job that the engine reports failed (submitit: not requeued, out of time, node failure) is a failed attempt
    with the engine's message, so `--retries` applies to it as to a failed command."""

    remote = True

    def __init__(self, engine: Any) -> None:
        if not callable(getattr(engine, "submit", None)):
            raise CompareError(
                f"executor {engine!r} has no submit(fn) method: give 'local', 'submitit', or an object such as "
                "submitit.AutoExecutor(folder=...) whose submit(fn) returns a job with result() and cancel()"
            )
        self.engine = engine
        self._live: set[Any] = set()
        self._guard = threading.Lock()

    def run(self, attempt: Attempt) -> AttemptResult:
        job = self.engine.submit(attempt)
        with self._guard:
            self._live.add(job)
        try:
            result = job.result()
        except Exception as error:
            lines = str(error).strip().splitlines()
            return AttemptResult(
                False, 0.0, [], f"the job failed: {lines[-1] if lines else type(error).__name__}",
                str(getattr(getattr(job, "paths", None), "stderr", "the job's log")), "\n".join(lines[-20:]),
            )  # fmt: skip
        finally:
            with self._guard:
                self._live.discard(job)
        if not isinstance(result, AttemptResult):
            raise CompareError(f"executor {self.engine!r} returned {result!r} instead of the attempt's result")
        return result

    def stop_all(self) -> None:
        with self._guard:
            live = list(self._live)
        for job in live:
            with contextlib.suppress(Exception):
                job.cancel()


def parse_executor_params(words: Sequence[str]) -> dict[str, Any]:
    """`key=value` words → {key: value}, each value read as JSON when it is (60, true, [0, 1]) else as text."""
    params: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise CompareError(f"--executor_params takes key=value words (e.g. timeout_min=600), got {word!r}")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
    return params


def make_executor(executor: str | Any, params: Mapping[str, Any] | None, output_dir: Path) -> Executor:
    """'local', 'submitit' (an AutoExecutor whose files go under `<output_dir>/submitit`, with `params` passed to
    its update_parameters), or an engine object with submit(fn)."""
    params = dict(params or {})
    if executor == "local":
        if params:
            raise CompareError("--executor_params is for --executor submitit; the local executor takes none")
        return LocalExecutor()
    if executor == "submitit":
        try:
            import submitit
        except ImportError:
            raise CompareError(
                "--executor submitit needs the submitit package: pip install 'amp-hf[cluster]'"
            ) from None
        if not {"timeout_min", "slurm_time"} & set(params):
            raise CompareError(
                "--executor submitit needs a time limit per run: --executor_params timeout_min=MINUTES (submitit's "
                "default, 5 minutes on SLURM and 2 locally, would end every real run); a preempted or timed-out run "
                "is requeued"
            )
        engine = submitit.AutoExecutor(folder=output_dir / SUBMITIT_FOLDER / "%j")
        try:
            engine.update_parameters(**params)
        except (ValueError, TypeError, NameError) as error:  # submitit names an unknown parameter with NameError
            raise CompareError(f"--executor_params: {error}") from None
        return SubmitExecutor(engine)
    if isinstance(executor, str):
        choices = ", ".join(EXECUTORS)
        raise CompareError(f"--executor must be one of {choices} (or an executor object), got {executor!r}")
    if params:
        raise CompareError("executor_params is for executor='submitit'; configure an executor object yourself")
    return SubmitExecutor(executor)
