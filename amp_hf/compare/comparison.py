"""The two ways to run a comparison: `run_comparison` (the user's training command, as `python -m amp_hf.compare`
does) and `compare` (a Python function that trains one run, for notebooks). Both check everything before anything
trains, run what is not finished yet, read the run folders the same way and write the same report."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .attempt import FunctionAttempt
from .candidates import Candidate, CompareError, check_seeds, parse_candidates
from .checkpoints import check_keep
from .command import attempt_factory, check_command
from .devices import plan_devices
from .evaluation import check_evaluation
from .executors import LocalExecutor, make_executor
from .identity import command_identity, function_identity, per_run
from .plan import Job, Outcome, Settings, execute, plan, stop_on_terminate
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
    outcomes: Sequence[Outcome],
    output_dir: Path,
    identity: Callable[[Candidate, int], dict],
    metric: str | None,
    greater_is_better: bool | None,
    margin: float | None = None,
) -> ComparisonReport:
    """Reads every finished run (also those another comparison on this folder finished meanwhile), builds the report
    and writes compare.json / .md / .png."""
    _, finished = plan(output_dir, candidates, seeds, identity)
    done = {(job.candidate.name, job.seed) for job in finished}
    records: dict[tuple[str, int], RunRecord] = {}
    missing = [o.missing_entry() for o in outcomes if not o.ok and (o.job.candidate.name, o.job.seed) not in done]
    for job in finished:
        try:
            records[(job.candidate.name, job.seed)] = RunRecord.read(job.folder, job.candidate.name, job.seed)
        except CompareError as error:
            missing.append({"candidate": job.candidate.name, "seed": job.seed, "reason": str(error)})
    report = build_report(candidates, seeds, records, missing, metric, greater_is_better, margin)
    report.write(output_dir)
    return report


def _check_count(flag: str, value: int, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise CompareError(f"{flag} must be an integer >= {least}, got {value!r}")
    return value


def _announce(to_run: Sequence[Job], finished: Sequence[Job], output_dir: Path, how: str) -> None:
    """The first console line: what will train, how, and where the logs go (nothing is silent until a run ends)."""
    reused = f", {len(finished)} finished runs reused" if finished else ""
    if not to_run:
        print(f"[compare] 0 runs to train{reused}", file=sys.stderr, flush=True)
        return
    print(
        f"[compare] {len(to_run)} runs to train{reused}, {how}; logs: {output_dir}/runs/<candidate>/seed-<seed>.log "
        "while a run trains, its folder's compare.log after",
        file=sys.stderr,
        flush=True,
    )


def run_comparison(
    command: Sequence[str],
    *,
    seeds: Sequence[int],
    candidates: Sequence[str | Mapping[str, Any]],
    output_dir: str | Path,
    parallel: int | None = None,
    metric: str | None = None,
    greater_is_better: bool | None = None,
    margin: float | None = None,
    env: Mapping[str, str] | None = None,
    gpus_per_run: int | None = None,
    executor: str | Any = "local",
    executor_params: Mapping[str, Any] | None = None,
    keep_checkpoints: str = "all",
    retries: int = 0,
) -> ComparisonReport:
    """Runs `command` once per (candidate, seed) with `--output_dir <run folder> --seed <seed> <candidate flags>`
    appended (ERM: `--amp_inner_steps 0`, always a candidate), seed-major, skipping finished runs and runs another
    comparison on this folder is training, then compares every candidate with ERM on the paired seeds and writes
    compare.md / compare.json / compare.png in `output_dir`.

    Locally (`executor="local"`) each run gets `gpus_per_run` devices of its own (default: the launcher's process
    count, 1 for plain python) and `parallel` runs go at a time (default: devices ÷ gpus_per_run on a GPU host, 1
    on CPU). `executor="submitit"` (with `executor_params` for its update_parameters) or an executor object with
    submit(fn) hands each run to that engine instead (`parallel` then defaults to every run at once).
    `keep_checkpoints` ('all', 'best', 'none') prunes a finished run's checkpoints; `retries` tries a failed run
    again. Bad input raises CompareError before anything trains; a failed run is reported and left out; Ctrl-C or
    SIGTERM ends the runs in flight and raises ComparisonStopped."""
    seeds = check_seeds(seeds)
    parsed = parse_candidates(candidates)
    retries = _check_count("--retries", retries, 0)
    keep_checkpoints = check_keep(keep_checkpoints)
    output_dir = Path(output_dir).resolve()
    command = list(command)
    extra_env = dict(env or {})
    base_env = {**os.environ, **extra_env}
    base_env.pop(RUN_ENVIRONMENT, None)  # each run gets its own folder there; the --help check gets none
    engine = make_executor(executor, executor_params, output_dir)
    # a remote engine's runs get their devices from it (e.g. SLURM's gpus_per_node), not from this host's
    devices = plan_devices(command, {"CUDA_VISIBLE_DEVICES": ""} if engine.remote else base_env, gpus_per_run, parallel)
    identity_of = per_run(command_identity(command))
    to_run, finished = plan(output_dir, parsed, seeds, identity_of)
    if to_run:
        check_evaluation(command)
        check_command(command, base_env)
    if engine.remote:
        devices = replace(devices, parallel=parallel or max(1, len(to_run)))  # the engine queues the rest
        how = f"each as a job of {executor if isinstance(executor, str) else type(executor).__name__}"
    elif devices.devices:
        how = f"{devices.parallel} at a time, {devices.per_run} device(s) each of {','.join(devices.devices)}"
    else:
        how = f"{devices.parallel} at a time on CPU"
    _announce(to_run, finished, output_dir, how)
    settings = Settings(
        engine, attempt_factory(command, extra_env, devices, engine.remote), devices.parallel, retries, keep_checkpoints
    )
    with stop_on_terminate():
        outcomes = execute(to_run, settings, already=len(finished))
    return _finish(parsed, seeds, outcomes, output_dir, identity_of, metric, greater_is_better, margin)


def compare(
    train_fn: Callable[[RunRequest], Any],
    *,
    seeds: Sequence[int],
    candidates: Sequence[str | Mapping[str, Any]],
    output_dir: str | Path,
    metric: str | None = None,
    greater_is_better: bool | None = None,
    margin: float | None = None,
    keep_checkpoints: str = "all",
    retries: int = 0,
) -> ComparisonReport:
    """`run_comparison` for a notebook: `train_fn(request)` trains one run into `request.output_dir` (an AMPTrainer
    built there records what compare reads, even without save_state / save_metrics), one run at a time in this
    process. Finished runs are reused as by the command; a train_fn that raises (also SystemExit) is reported as a
    missing run; Ctrl-C stops the comparison (ComparisonStopped, a KeyboardInterrupt)."""
    seeds = check_seeds(seeds)
    parsed = parse_candidates(candidates)
    retries = _check_count("retries", retries, 0)
    keep_checkpoints = check_keep(keep_checkpoints)
    output_dir = Path(output_dir).resolve()
    identity_of = per_run(function_identity(train_fn))
    to_run, finished = plan(output_dir, parsed, seeds, identity_of)
    _announce(to_run, finished, output_dir, "one at a time in this process")

    def make_attempt(job: Job, slot: int) -> FunctionAttempt:
        request = RunRequest(job.candidate.name, job.seed, job.folder, dict(job.candidate.arguments))
        return FunctionAttempt(train_fn, request, job.folder)

    settings = Settings(LocalExecutor(), make_attempt, 1, retries, keep_checkpoints)
    outcomes = execute(to_run, settings, already=len(finished))
    return _finish(parsed, seeds, outcomes, output_dir, identity_of, metric, greater_is_better, margin)
