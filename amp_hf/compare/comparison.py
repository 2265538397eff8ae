"""The two ways to run a comparison: `run_comparison` (the user's training command, as `python -m amp_hf.compare`
does) and `compare` (a Python function that trains one run, for notebooks). Both check everything before anything
trains, run what is not finished yet, read the run folders the same way and write the same report."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .candidates import Candidate, CompareError, check_seeds, parse_candidates
from .command import check_command, make_runner
from .evaluation import check_evaluation
from .identity import command_identity, function_identity, per_run
from .plan import Job, Outcome, execute, mark_done, plan, prepare, stop_on_terminate
from .recording import RUN_ENVIRONMENT
from .report import ComparisonReport, build_report
from .runs import RunRecord


@dataclass(frozen=True)
class RunRequest:
    """One run that `compare` asks `train_fn` for: train into `output_dir` with this seed and these amp_* arguments
    (e.g. `AMPTrainingArguments(output_dir=request.output_dir, seed=request.seed, **request.amp_arguments, ...)`)."""

    candidate: str
    seed: int
    output_dir: Path
    amp_arguments: dict[str, Any]


def _finish(
    candidates: Sequence[Candidate],
    seeds: Sequence[int],
    finished: Sequence[Job],
    outcomes: Sequence[Outcome],
    output_dir: Path,
    metric: str | None,
    greater_is_better: bool | None,
    margin: float | None = None,
) -> ComparisonReport:
    """Reads every finished run, builds the report and writes compare.json / .md / .png."""
    records: dict[tuple[str, int], RunRecord] = {}
    missing = [o.missing_entry() for o in outcomes if not o.ok]
    for job in [*finished, *(o.job for o in outcomes if o.ok)]:
        try:
            records[(job.candidate.name, job.seed)] = RunRecord.read(job.folder, job.candidate.name, job.seed)
        except CompareError as error:
            missing.append({"candidate": job.candidate.name, "seed": job.seed, "reason": str(error)})
    report = build_report(candidates, seeds, records, missing, metric, greater_is_better, margin)
    report.write(output_dir)
    return report


def _check_parallel(parallel: int) -> int:
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise CompareError(f"--parallel must be an integer >= 1, got {parallel!r}")
    return parallel


def run_comparison(
    command: Sequence[str],
    *,
    seeds: Sequence[int],
    candidates: Sequence[str | Mapping[str, Any]],
    output_dir: str | Path,
    parallel: int = 1,
    metric: str | None = None,
    greater_is_better: bool | None = None,
    margin: float | None = None,
    env: Mapping[str, str] | None = None,
) -> ComparisonReport:
    """Runs `command` once per (candidate, seed) with `--output_dir <run folder> --seed <seed> <candidate flags>`
    appended (ERM: `--amp_inner_steps 0`, always a candidate), `parallel` at a time, skipping finished runs, then
    compares every candidate with ERM on the paired seeds and writes compare.md / compare.json / compare.png in
    `output_dir`. Bad input raises CompareError before anything trains; a failed run is reported and left out."""
    seeds = check_seeds(seeds)
    parsed = parse_candidates(candidates)
    parallel = _check_parallel(parallel)
    output_dir = Path(output_dir).resolve()
    command = list(command)
    base_env = {**os.environ, **(env or {})}
    base_env.pop(RUN_ENVIRONMENT, None)  # a comparison started from inside a compared run records its own runs only
    to_run, finished = plan(output_dir, parsed, seeds, per_run(command_identity(command)))
    if to_run:
        check_evaluation(command)
        check_command(command, base_env)
    if finished:
        print(f"[compare] {len(finished)} finished runs reused, {len(to_run)} to run", file=sys.stderr, flush=True)
    run_one, abort = make_runner(command, base_env, parallel)
    with stop_on_terminate():
        outcomes = execute(to_run, run_one, parallel, already=len(finished), on_abort=abort)
    return _finish(parsed, seeds, finished, outcomes, output_dir, metric, greater_is_better, margin)


def compare(
    train_fn: Callable[[RunRequest], Any],
    *,
    seeds: Sequence[int],
    candidates: Sequence[str | Mapping[str, Any]],
    output_dir: str | Path,
    metric: str | None = None,
    greater_is_better: bool | None = None,
    margin: float | None = None,
) -> ComparisonReport:
    """`run_comparison` for a notebook: `train_fn(request)` trains one run into `request.output_dir` (an AMPTrainer
    built there records what compare reads, even without save_state / save_metrics), one run at a time in this
    process. Finished runs are reused as by the command; a train_fn that raises is reported as a missing run."""
    seeds = check_seeds(seeds)
    parsed = parse_candidates(candidates)
    output_dir = Path(output_dir).resolve()
    to_run, finished = plan(output_dir, parsed, seeds, per_run(function_identity(train_fn)))

    def run_one(job: Job, slot: int) -> Outcome:
        prepare(job)
        job.folder.mkdir(parents=True)
        request = RunRequest(job.candidate.name, job.seed, job.folder, dict(job.candidate.arguments))
        saved = os.environ.get(RUN_ENVIRONMENT)
        os.environ[RUN_ENVIRONMENT] = str(job.folder)
        started = time.perf_counter()
        try:
            train_fn(request)
        except Exception:
            tail = "\n".join(traceback.format_exc().strip().splitlines()[-20:])
            return Outcome(job, False, time.perf_counter() - started, "train_fn raised", "the traceback", tail)
        finally:
            if saved is None:
                os.environ.pop(RUN_ENVIRONMENT, None)
            else:
                os.environ[RUN_ENVIRONMENT] = saved
        seconds = time.perf_counter() - started
        mark_done(job, seconds)
        return Outcome(job, True, seconds)

    outcomes = execute(to_run, run_one, 1, already=len(finished))
    return _finish(parsed, seeds, finished, outcomes, output_dir, metric, greater_is_better, margin)
