"""Which runs a comparison still needs, and running them: one path for the command (local processes, or submitit
jobs) and the in-process form (a notebook's train function), so that both lock, retry, prune checkpoints, mark done
and report progress the same way (`run_job`, `execute`).

Order: seed-major (seed 0 of every candidate, then seed 1, ...), so that a comparison cut off halfway still has paired
seeds for every candidate, and runs of one candidate are spread over the session (load on the machine then shows as
spread in the time ratio instead of a bias).

Resuming: a run is finished when its folder holds the done-marker (written only after success, with the command,
settings and seed). Finished runs are never run again; a folder without the marker is what a killed or failed run
left, and is emptied before the run starts again, so a killed comparison loses only the runs in flight and adding
seeds or candidates reuses every finished run. A finished run recorded with another command or settings is an error
(before anything runs), never silently mixed with new runs.

Several comparisons on one output folder (cluster jobs): each run is trained under its lock (`locks`), by whoever
takes it first; the others skip it and report it once it is finished.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .attempt import AttemptResult
from .candidates import Candidate
from .checkpoints import prune_checkpoints
from .executors import Attempt, Executor
from .jsonfiles import write_json
from .locks import RunLock, describe, heartbeat
from .runs import DONE_FILE, check_done_matches, read_done, run_folder


@dataclass(frozen=True)
class Job:
    """One (candidate, seed) run and where it goes."""

    candidate: Candidate
    seed: int
    folder: Path
    identity: Mapping[str, Any]
    """What the done-marker records and a later comparison must match: the command, settings and seed."""


@dataclass
class Outcome:
    job: Job
    ok: bool
    seconds: float
    reason: str = ""
    """For a failed run: what went wrong, in a few words."""
    log: str = ""
    """For a failed run: where its log is."""
    tail: str = ""
    """For a failed run: the last lines of its log (or of the traceback)."""
    attempts: int = 1
    elsewhere: bool = False
    """Not run here: another comparison holds its lock (it is reported when finished)."""

    @property
    def error(self) -> str:
        name = f"{self.job.candidate.name} seed {self.job.seed}"
        return f"{name} failed: {self.reason}; the last lines of {self.log}:\n{self.tail}"

    def missing_entry(self) -> dict[str, str | int]:
        entry: dict[str, str | int] = {"candidate": self.job.candidate.name, "seed": self.job.seed}
        if self.elsewhere:
            return {**entry, "reason": self.reason}
        return {**entry, "reason": self.reason, "log": self.log, "log_tail": self.tail, "attempts": self.attempts}


class ComparisonStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the comparison: the runs in flight were ended (no marker: they run again next
    time). A KeyboardInterrupt, so that a notebook's interrupt behaves as usual."""

    def __init__(self, stopped: int, signum: int = signal.SIGINT) -> None:
        super().__init__(f"{stopped} run{'' if stopped == 1 else 's'} stopped; rerun to resume")
        self.stopped = stopped
        self.signum = signum


class _Terminated(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def plan(
    output_dir: Path, candidates: Sequence[Candidate], seeds: Sequence[int], identity: Callable[[Candidate, int], dict]
) -> tuple[list[Job], list[Job]]:
    """(jobs to run, finished jobs), seed-major. Raises CompareError for a finished run whose identity differs."""
    to_run, finished = [], []
    for seed in seeds:
        for candidate in candidates:
            job = Job(candidate, seed, run_folder(output_dir, candidate.name, seed), identity(candidate, seed))
            done = read_done(job.folder)
            if done is None:
                to_run.append(job)
            else:
                check_done_matches(done, job.identity, job.folder)
                finished.append(job)
    return to_run, finished


def mark_done(job: Job, result: AttemptResult, attempts: int) -> None:
    """The done-marker, written last and atomically: a run counts as finished only once this file exists. Besides
    the identity: the seconds, the devices the run had (for device-hours), the attempts it took and the host."""
    record = {
        **job.identity,
        "seconds": round(result.seconds, 3),
        "devices": list(result.devices),
        "attempts": attempts,
        "host": socket.gethostname(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(job.folder / DONE_FILE, record)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@dataclass
class Settings:
    """How `execute` runs the jobs: the same for the command and the in-process form."""

    executor: Executor
    make_attempt: Callable[[Job, int], Attempt]
    """The attempt of one job on worker `slot` (the slot picks its devices and port)."""
    parallel: int = 1
    retries: int = 0
    keep_checkpoints: str = "all"


def run_job(
    job: Job, settings: Settings, take_slot: Callable[[], Any], stream, stopping: threading.Event | None = None
) -> Outcome:
    """One run, under its lock: up to 1 + retries attempts; on success its checkpoints pruned and its done-marker
    written. A run someone else holds is skipped (`elsewhere`); one they finished meanwhile is reported finished."""
    lock, owner = RunLock.acquire(job.folder)
    if lock is None:
        return Outcome(job, False, 0.0, f"being trained by {describe(owner)}; rerun to report it", elsewhere=True)
    try:
        if read_done(job.folder) is not None:  # finished by another comparison between our plan and our lock
            return Outcome(job, True, 0.0, attempts=0)
        with heartbeat(lock):
            attempts = 1 + settings.retries
            for number in range(1, attempts + 1):
                with take_slot() as slot:
                    result = settings.executor.run(settings.make_attempt(job, slot))
                if result.ok:
                    prune_checkpoints(job.folder, settings.keep_checkpoints)
                    mark_done(job, result, number)
                    return Outcome(job, True, result.seconds, attempts=number)
                if number < attempts and not (stopping and stopping.is_set()):
                    print(
                        f"[compare] {job.candidate.name} seed {job.seed}: attempt {number} of {attempts} failed "
                        f"({result.reason}); trying again",
                        file=stream,
                        flush=True,
                    )
                else:
                    break
            reason = result.reason if number == 1 else f"{result.reason} (all {number} attempts failed)"
            return Outcome(job, False, result.seconds, reason, result.log, result.tail, number)
    finally:
        lock.release()


def execute(
    jobs: Sequence[Job], settings: Settings, total: int | None = None, already: int = 0, stream=None
) -> list[Outcome]:
    """Runs `jobs` `settings.parallel` at a time, printing one progress line per finished run: candidate, seed, k/n
    done, elapsed, estimated time left. Interrupted (Ctrl-C, or SIGTERM where `stop_on_terminate` is active), it
    starts nothing more, ends the runs in flight and raises ComparisonStopped; their folders have no done-marker
    and run again next time."""
    stream = stream or sys.stderr
    total = total if total is not None else len(jobs) + already
    parallel = max(1, settings.parallel)
    started = time.perf_counter()
    lock = threading.Lock()
    free_slots = list(range(parallel))
    stopping = threading.Event()
    in_flight: set[tuple[str, int]] = set()
    outcomes: list[Outcome] = []

    @contextmanager
    def take_slot() -> Iterator[int]:
        with lock:
            slot = free_slots.pop(0)
        try:
            yield slot
        finally:
            with lock:
                free_slots.append(slot)

    def work(job: Job) -> Outcome | None:
        if stopping.is_set():
            return None
        with lock:
            in_flight.add((job.candidate.name, job.seed))
        outcome = run_job(job, settings, take_slot, stream, stopping)
        with lock:
            in_flight.discard((job.candidate.name, job.seed))
        if stopping.is_set():
            return None
        with lock:
            outcomes.append(outcome)
            if outcome.elsewhere:
                print(f"[compare] {job.candidate.name} seed {job.seed}: {outcome.reason}", file=stream, flush=True)
                return outcome
            done = sum(1 for o in outcomes if not o.elsewhere)
            elapsed = time.perf_counter() - started
            left = len(jobs) - len(outcomes)
            trained = [o for o in outcomes if not o.elsewhere and o.attempts]
            mean = sum(o.seconds for o in trained) / len(trained) if trained else 0.0
            eta = mean * left / max(1, min(parallel, left)) if left else 0.0
            status = f"finished in {_duration(outcome.seconds)}" if outcome.ok else "FAILED"
            if outcome.ok and not outcome.attempts:
                status = "finished by another comparison"
            print(
                f"[compare] {job.candidate.name} seed {job.seed}: {status} ({already + done}/{total} done, "
                f"{_duration(elapsed)} elapsed, ~{_duration(eta)} left)",
                file=stream,
                flush=True,
            )
            if not outcome.ok:
                print(outcome.error, file=stream, flush=True)
        return outcome

    pool = ThreadPoolExecutor(max_workers=parallel) if parallel > 1 else None
    try:
        if pool is None:
            for job in jobs:
                work(job)
        else:
            list(pool.map(work, jobs))
    except KeyboardInterrupt as interrupt:
        stopping.set()
        with _interrupts_ignored():
            stopped = len(in_flight)
            settings.executor.stop_all()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        raise ComparisonStopped(stopped, getattr(interrupt, "signum", signal.SIGINT)) from None
    except BaseException:
        stopping.set()
        settings.executor.stop_all()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    if pool is not None:
        pool.shutdown()
    return outcomes


@contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """A second Ctrl-C while the runs in flight are being ended would leave them running: ignored meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def stop_on_terminate() -> Iterator[None]:
    """SIGTERM (`kill <pid>`, a scheduler's cancel) stops a comparison as Ctrl-C does, so that `execute` ends the
    runs in flight instead of leaving them running without their parent; outside the main thread, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
