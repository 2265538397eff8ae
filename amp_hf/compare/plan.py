"""Which runs a comparison still needs, and running them with a progress line each: shared by the command
(subprocesses, in parallel) and the in-process form (a notebook's train function, one at a time).

Resuming: a run is finished when its folder holds the done-marker (written only after success, with the command,
settings and seed). Finished runs are never run again; a folder without the marker is what a killed or failed run
left, and is removed before the run starts again, so a killed comparison loses only the runs in flight and adding
seeds or candidates reuses every finished run. A finished run recorded with another command or settings is an error
(before anything runs), never silently mixed with new runs.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .candidates import Candidate
from .jsonfiles import write_json
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

    @property
    def error(self) -> str:
        name = f"{self.job.candidate.name} seed {self.job.seed}"
        return f"{name} failed: {self.reason}; the last lines of {self.log}:\n{self.tail}"

    def missing_entry(self) -> dict[str, str | int]:
        return {
            "candidate": self.job.candidate.name,
            "seed": self.job.seed,
            "reason": self.reason,
            "log": self.log,
            "log_tail": self.tail,
        }


def plan(
    output_dir: Path, candidates: Sequence[Candidate], seeds: Sequence[int], identity: Callable[[Candidate, int], dict]
) -> tuple[list[Job], list[Job]]:
    """(jobs to run, finished jobs). Raises CompareError for a finished run whose identity differs."""
    to_run, finished = [], []
    for candidate in candidates:
        for seed in seeds:
            job = Job(candidate, seed, run_folder(output_dir, candidate.name, seed), identity(candidate, seed))
            done = read_done(job.folder)
            if done is None:
                to_run.append(job)
            else:
                check_done_matches(done, job.identity, job.folder)
                finished.append(job)
    return to_run, finished


def prepare(job: Job) -> None:
    """Removes what an unfinished earlier attempt left (a checkpoint there would make the script resume or refuse)."""
    if job.folder.exists():
        shutil.rmtree(job.folder)
    job.folder.parent.mkdir(parents=True, exist_ok=True)


def mark_done(job: Job, seconds: float) -> None:
    """The done-marker, written last and atomically: a run counts as finished only once this file exists."""
    record = {
        **job.identity,
        "seconds": round(seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(job.folder / DONE_FILE, record)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def execute(
    jobs: Sequence[Job],
    run_one: Callable[[Job, int], Outcome],
    parallel: int = 1,
    total: int | None = None,
    already: int = 0,
    stream=None,
    on_abort: Callable[[], None] | None = None,
) -> list[Outcome]:
    """Runs `jobs` `parallel` at a time (run_one(job, slot) with slot in [0, parallel) names the worker, e.g. for a
    device), printing one progress line per finished run: candidate, seed, k/n done, elapsed, estimated time left.
    Interrupted (Ctrl-C, or SIGTERM where `stop_on_terminate` is active), it starts nothing more and calls `on_abort`
    (the command's: terminate the runs in flight), whose folders then have no done-marker and run again next time."""
    stream = stream or sys.stderr
    total = total if total is not None else len(jobs) + already
    started = time.perf_counter()
    lock = threading.Lock()
    free_slots = list(range(max(1, parallel)))
    stopping = threading.Event()
    outcomes: list[Outcome] = []

    def work(job: Job) -> Outcome:
        with lock:
            slot = free_slots.pop(0)
        try:
            outcome = run_one(job, slot)
        finally:
            with lock:
                free_slots.append(slot)
        if stopping.is_set():
            return outcome
        with lock:
            outcomes.append(outcome)
            done = len(outcomes)
            elapsed = time.perf_counter() - started
            left = len(jobs) - done
            mean = sum(o.seconds for o in outcomes) / done
            eta = mean * left / max(1, min(parallel, left)) if left else 0.0
            status = f"finished in {_duration(outcome.seconds)}" if outcome.ok else "FAILED"
            print(
                f"[compare] {job.candidate.name} seed {job.seed}: {status} ({already + done}/{total} done, "
                f"{_duration(elapsed)} elapsed, ~{_duration(eta)} left)",
                file=stream,
                flush=True,
            )
            if not outcome.ok:
                print(outcome.error, file=stream, flush=True)
        return outcome

    def guarded(job: Job) -> Outcome | None:
        return None if stopping.is_set() else work(job)

    pool = ThreadPoolExecutor(max_workers=parallel) if parallel > 1 else None
    try:
        if pool is None:
            for job in jobs:
                work(job)
        else:
            list(pool.map(guarded, jobs))
    except BaseException:
        stopping.set()
        if on_abort is not None:
            on_abort()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    if pool is not None:
        pool.shutdown()
    return outcomes


@contextmanager
def stop_on_terminate() -> Iterator[None]:
    """SIGTERM (`kill <pid>`) raises SystemExit in the main thread while a comparison runs, so that `execute` can stop
    the runs in flight instead of leaving them running without their parent; outside the main thread, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
