"""Running the user's training command, once per (candidate, seed): the checks before anything trains, the command
line of each run, its environment (threads, a device, the recorder's folder) and its log.

Each run is `<command> --output_dir <run folder> --seed <seed> <candidate flags>`; argparse keeps the last value of a
repeated flag, so these win over the same flags in the command. The run's output (stdout and stderr) goes to
`runs/<candidate>/seed-<seed>.log` while it runs and into its folder as `compare.log` once it ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from .attempt import TAIL_LINES, CommandAttempt, command_attempt
from .candidates import CompareError, check_amp_flags
from .devices import DevicePlan, free_port, launcher, with_port
from .plan import Job


def _script_part(command: Sequence[str]) -> list[str] | None:
    """For `accelerate launch [options] train.py args` (or torchrun / deepspeed), `[python, train.py, args]`; for
    `... -m module args`, `[python, -m, module, args]`; None when the command is not a known launcher's (a
    launcher's own --help is not the script's: the --amp_* check runs the script itself with python)."""
    found = launcher(command)
    if found is None:
        return None
    rest = list(command[found[1] :])
    for i, word in enumerate(rest):
        if word.endswith(".py") or (word == "-m" and i + 1 < len(rest)):
            return [sys.executable, *rest[i:]]
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


def run_environment(extra: Mapping[str, str], devices: Sequence[str], port: int, parallel: int) -> dict[str, str]:
    """What one local run adds to the environment: with several runs at a time, the CPU cores split between them
    (OMP/MKL threads = cores // parallel, unless set); on a host with devices, the run's own
    (`CUDA_VISIBLE_DEVICES`, so a plain python run never sees more than it uses); its own rendezvous port."""
    env = dict(extra)
    if parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, threads)
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    env["MASTER_PORT"] = str(port)
    return env


def attempt_factory(
    command: Sequence[str], extra_env: Mapping[str, str], devices: DevicePlan, remote: bool
) -> Callable[[Job, int], CommandAttempt]:
    """make_attempt(job, slot) for plan.execute. Local runs get the slot's devices and port (slots at the same time
    never share them); a remote run (submitit, Ray) gets its devices from its engine and a port free on its node."""
    ports: list[int] = []
    for _ in range(devices.parallel):
        ports.append(free_port(set(ports)))

    def make_attempt(job: Job, slot: int) -> CommandAttempt:
        flags = job.candidate.flags()
        if remote:  # its port is picked on the node, which other jobs may share
            return command_attempt(command, extra_env, job.folder, job.seed, flags, port_on_start=True)
        port = ports[slot]
        env = run_environment(extra_env, devices.for_slot(slot), port, devices.parallel)
        return command_attempt(with_port(command, port), env, job.folder, job.seed, flags)

    return make_attempt
