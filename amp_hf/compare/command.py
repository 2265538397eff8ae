"""Running the user's training command, once per (candidate, seed): the checks before anything trains, the command
line of each run, its environment (threads, a device, the recorder's folder) and its log.

Each run is `<command> --output_dir <run folder> --seed <seed> <candidate flags>`; argparse keeps the last value of a
repeated flag, so these win over the same flags in the command. The run's output (stdout and stderr) goes to
`runs/<candidate>/seed-<seed>.log` while it runs and into its folder as `compare.log` once it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .candidates import CompareError, check_amp_flags
from .plan import Job, Outcome, mark_done, prepare
from .recording import RUN_ENVIRONMENT
from .runs import LOG_FILE

LAUNCHERS = ("accelerate", "torchrun", "deepspeed")
"""Launchers whose own --help is not the script's: the --amp_* check runs the script itself with python."""
TAIL_LINES = 20


def _script_part(command: Sequence[str]) -> list[str] | None:
    """For `accelerate launch [options] train.py args` (or torchrun / deepspeed), `[python, train.py, args]`; for
    `... -m module args`, `[python, -m, module, args]`; None when the command is not a known launcher's."""
    name = Path(command[0]).name
    module_launcher = name.startswith("python") and len(command) > 2 and command[1] == "-m"
    launcher = command[2] if module_launcher else name
    if not any(launcher == x or launcher.startswith(x + ".") for x in LAUNCHERS):
        return None
    for i, word in enumerate(command):
        if word.endswith(".py") and i > 0:
            return [sys.executable, *command[i:]]
        if word == "-m" and i > 0 and not (module_launcher and i == 1) and i + 1 < len(command):
            return [sys.executable, *command[i:]]
    return None


def check_command(command: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300.0) -> None:
    """Refuses, before anything trains, a command that cannot take the candidates: empty, one that sets amp_* flags
    the candidates set themselves, and one whose --help does not list --amp_inner_steps and --amp_preset (a script
    that does not parse AMPTrainingArguments with HfArgumentParser would ignore them, and every candidate would be
    plain training). For a launcher (accelerate launch, torchrun) the script's own --help is read, run with python."""
    if not command:
        raise CompareError("no command: give the training command after --, e.g. -- python train.py --do_train ...")
    check_amp_flags(command)
    probe = _script_part(command) or list(command)
    try:
        done = subprocess.run(
            [*probe, "--help"], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CompareError(
            f"could not run {' '.join(probe)} --help to check it accepts --amp_* flags: {error}"
        ) from None
    text = done.stdout + done.stderr
    if "--amp_inner_steps" not in text or "--amp_preset" not in text:
        tail = "\n".join(text.strip().splitlines()[-TAIL_LINES:])
        if done.returncode != 0:  # a crash says nothing about the flags: say what happened instead
            raise CompareError(
                f"the command failed before it could show its flags: `{' '.join(probe)} --help` exited with code "
                f"{done.returncode} (is it run by the Python environment that has your packages?). Its output "
                f"ended:\n{tail}"
            )
        raise CompareError(
            f"the command does not accept --amp_* flags: `{' '.join(probe)} --help` does not list --amp_inner_steps "
            "and --amp_preset. compare runs scripts that parse AMPTrainingArguments with HfArgumentParser (the Hugging "
            f"Face example scripts with TrainingArguments swapped for AMPTrainingArguments). Its output ended:\n{tail}"
        )


def run_command(command: Sequence[str], job: Job) -> list[str]:
    """The full command line of one run."""
    return [*command, "--output_dir", str(job.folder), "--seed", str(job.seed), *job.candidate.flags()]


def visible_devices(env: Mapping[str, str]) -> list[str]:
    """The CUDA devices runs can be spread over: CUDA_VISIBLE_DEVICES's list, else torch's count (none on CPU)."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:
        return []


def run_environment(base: Mapping[str, str], job: Job, slot: int, parallel: int, devices: Sequence[str]) -> dict:
    """One run's environment: the recorder's folder; with several runs at a time, the CPU cores split between them
    (OMP/MKL threads = cores // parallel, unless set) and, where there are several devices, one device per run."""
    env = {**base, RUN_ENVIRONMENT: str(job.folder)}
    if parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, threads)
        if len(devices) > 1:
            env["CUDA_VISIBLE_DEVICES"] = devices[slot % len(devices)]
    return env


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def make_runner(command: Sequence[str], env: Mapping[str, str], parallel: int):
    """(run_one, abort) for plan.execute: run_one runs one job as a subprocess; abort terminates those in flight."""
    devices = visible_devices(env)
    live: set[subprocess.Popen] = set()

    def run_one(job: Job, slot: int) -> Outcome:
        prepare(job)
        log = job.folder.parent / f"{job.folder.name}.log"
        started = time.perf_counter()
        with open(log, "w") as out:
            out.write("$ " + " ".join(run_command(command, job)) + "\n")
            out.flush()
            process = subprocess.Popen(
                run_command(command, job),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=run_environment(env, job, slot, parallel, devices),
            )
            live.add(process)
            try:
                code = process.wait()
            finally:
                live.discard(process)
                if process.poll() is None:  # interrupted while waiting (one run at a time): stop it
                    terminate([process])
        seconds = time.perf_counter() - started
        if code == 0 and job.folder.is_dir():
            shutil.move(str(log), job.folder / LOG_FILE)
            mark_done(job, seconds)
            return Outcome(job, True, seconds)
        if code == 0:
            error = f"it exited 0 but wrote no {job.folder} (does the script use --output_dir?)"
        else:
            error = f"it exited with status {code}"
        where = log
        if job.folder.is_dir():
            where = job.folder / LOG_FILE
            shutil.move(str(log), where)
        return Outcome(job, False, seconds, error, str(where), log_tail(where))

    return run_one, lambda: terminate(list(live))


def terminate(processes: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: a stopped comparison leaves no run training without it."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
