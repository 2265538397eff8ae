"""One attempt at one run, the single place where a run trains: the user's command as a process
(`CommandAttempt`, run by a local thread or, pickled, by a submitit job on a cluster node) or the notebook's train
function in this process (`FunctionAttempt`). Both start from an empty run folder, set the recorder's variable, and
answer with an `AttemptResult`; what happens around them (locks, retries, checkpoints, the done-marker) is
`plan.run_job`'s, the same for both.

A command runs in its own session (process group), so that stopping it ends every process it started, also through a
wrapper script (`-- bash run.sh`): SIGTERM to the group, SIGKILL to the group after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .devices import free_port, visible_devices, with_port
from .recording import RUN_ENVIRONMENT
from .runs import LOG_FILE

TAIL_LINES = 20
GRACE_SECONDS = 10.0


@dataclass
class AttemptResult:
    ok: bool
    seconds: float
    devices: list[str]
    """The accelerator devices the run could see (CUDA_VISIBLE_DEVICES), [] on a CPU-only run."""
    reason: str = ""
    log: str = ""
    tail: str = ""


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def exit_reason(code: int) -> str:
    """A process's exit status in words: a signal is named (9: SIGKILL, usually the kernel's out-of-memory killer),
    also when a shell wrapper reports it as 128 + the signal's number."""

    def named(number: int) -> str:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"{name}: out of memory?" if number == signal.SIGKILL else name

    if code < 0:
        return f"killed by signal {-code} ({named(-code)})"
    if 128 < code <= 128 + 64:
        return f"exited with status {code} (a shell's 128 + signal {code - 128}: {named(code - 128)})"
    return f"exited with status {code}"


def empty_folder(folder: Path) -> None:
    """Removes what an unfinished earlier attempt left (a checkpoint there would make the script resume or refuse)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)


def stop_group(process: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to the process's group, SIGKILL to the group after `grace` seconds (or at once when its leader is gone:
    what a wrapper left behind)."""
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        group = process.pid  # the leader is gone; its group id was its pid (start_new_session)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait()


@dataclass(eq=False)
class CommandAttempt:
    """The user's command for one run. Picklable (for submitit); `env` is added to the environment of the process
    that calls it (on a cluster node, the node's own). `checkpoint` makes submitit requeue it on preemption; the
    requeued attempt starts the run again from an empty folder."""

    argv: list[str]
    env: dict[str, str]
    folder: Path
    log: Path
    port_on_start: bool = False
    """Pick the rendezvous port where the attempt runs (a cluster node, which other jobs may share) rather than
    where compare runs: MASTER_PORT and the launcher's port flag."""
    process: subprocess.Popen | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "process": None}

    def __call__(self) -> AttemptResult:
        empty_folder(self.folder)
        env, argv = {**os.environ, **self.env}, self.argv
        if self.port_on_start:
            port = free_port(set())
            env["MASTER_PORT"], argv = str(port), with_port(argv, port)
        started = time.perf_counter()
        with open(self.log, "w") as out:
            out.write("$ " + shlex.join(argv) + "\n")
            out.flush()
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                code = self.process.wait()
            finally:
                if self.process.poll() is None:  # stopped while waiting (Ctrl-C, SIGTERM, a preempted job)
                    stop_group(self.process)
        seconds = time.perf_counter() - started
        where = self.log
        if self.folder.is_dir():
            where = self.folder / LOG_FILE
            shutil.move(str(self.log), where)
        if code == 0 and self.folder.is_dir():
            return AttemptResult(True, seconds, visible_devices(env), log=str(where))
        reason = (
            f"it exited 0 but wrote no {self.folder} (does the script use --output_dir?)" if code == 0 else
            f"it {exit_reason(code)}"
        )  # fmt: skip
        return AttemptResult(False, seconds, visible_devices(env), reason, str(where), log_tail(where))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this on preemption or time-out (SIGUSR2): requeue the same attempt."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


@dataclass(eq=False)
class FunctionAttempt:
    """The notebook's train function for one run, in this process. An exception or a SystemExit it raises is a
    failed run (the others go on); Ctrl-C stops the comparison."""

    train_fn: Callable[[Any], Any]
    request: Any
    folder: Path

    def __call__(self) -> AttemptResult:
        empty_folder(self.folder)
        self.folder.mkdir(parents=True)
        saved = os.environ.get(RUN_ENVIRONMENT)
        os.environ[RUN_ENVIRONMENT] = str(self.folder)
        devices = visible_devices(os.environ)
        started = time.perf_counter()
        try:
            self.train_fn(self.request)
        except (Exception, SystemExit) as error:
            tail = "\n".join(traceback.format_exc().strip().splitlines()[-TAIL_LINES:])
            what = f"train_fn raised SystemExit({error.code!r})" if isinstance(error, SystemExit) else "train_fn raised"
            return AttemptResult(False, time.perf_counter() - started, devices, what, "the traceback", tail)
        finally:
            if saved is None:
                os.environ.pop(RUN_ENVIRONMENT, None)
            else:
                os.environ[RUN_ENVIRONMENT] = saved
        return AttemptResult(True, time.perf_counter() - started, devices)

    def stop(self) -> None:
        """Runs in this process: the KeyboardInterrupt that stops the comparison already stopped it."""


def command_attempt(
    command: Sequence[str],
    extra_env: Mapping[str, str],
    folder: Path,
    seed: int,
    flags: Sequence[str],
    port_on_start: bool = False,
) -> CommandAttempt:
    """The attempt of one run: `<command> --output_dir <folder> --seed <seed> <candidate flags>` (argparse keeps the
    last value of a repeated flag, so these win), its log at `runs/<candidate>/seed-<seed>.log` while it runs."""
    argv = [*command, "--output_dir", str(folder), "--seed", str(seed), *flags]
    env = {**extra_env, RUN_ENVIRONMENT: str(folder)}
    return CommandAttempt(argv, env, folder, folder.parent / f"{folder.name}.log", port_on_start)
