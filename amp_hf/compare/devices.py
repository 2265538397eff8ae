"""Which accelerator devices each run gets, and its own rendezvous port: runs at the same time never share a device
or a port, and a run never sees more devices than its command uses.

The devices are those in `CUDA_VISIBLE_DEVICES` when it is set (so that a job scheduler's allocation is respected, and
so that the behaviour is testable on a CPU machine), else torch's count. A run's share is `--gpus_per_run K`, by
default the number of processes the command's launcher starts (`accelerate launch --num_processes K`, `torchrun
--nproc_per_node K`, `deepspeed --num_gpus K`), 1 for a plain `python` command: a plain command that saw every GPU
would be wrapped in `nn.DataParallel` by the Trainer (which AMPTrainer refuses). On a GPU host `--parallel` defaults
to devices ÷ K, so that every device is used.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .candidates import CompareError

# launcher -> (its flags for processes per node, its flag for the rendezvous port)
_LAUNCHERS: dict[str, tuple[tuple[str, ...], str]] = {
    "accelerate": (("--num_processes", "--num-processes"), "--main_process_port"),
    "torchrun": (("--nproc_per_node", "--nproc-per-node"), "--master_port"),
    "torch.distributed.run": (("--nproc_per_node", "--nproc-per-node"), "--master_port"),
    "deepspeed": (("--num_gpus", "--num-gpus"), "--master_port"),
}
_PORT_FLAGS = ("--main_process_port", "--main-process-port", "--master_port", "--master-port", "--rdzv_endpoint")


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


def launcher(command: Sequence[str]) -> tuple[str, int] | None:
    """(the launcher's name, the index right after its own name / subcommand) for `accelerate launch ...`,
    `torchrun ...`, `deepspeed ...` and their `python -m` forms; None for any other command."""
    if not command:
        return None
    name = Path(command[0]).name
    if name.startswith("python") and len(command) > 2 and command[1] == "-m":
        module = command[2]
        for known in _LAUNCHERS:
            if module == known or module.startswith(known + "."):
                return known, 3
        return None
    if name == "accelerate":
        return ("accelerate", 2) if len(command) > 1 and command[1] == "launch" else None
    return (name, 1) if name in _LAUNCHERS else None


def _flag_value(words: Sequence[str], flags: Sequence[str]) -> str | None:
    for i, word in enumerate(words):
        for flag in flags:
            if word == flag and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(flag + "="):
                return word.split("=", 1)[1]
    return None


def _launcher_words(command: Sequence[str]) -> list[str]:
    """The launcher's own options: the words between its name and the script (the first *.py or -m)."""
    found = launcher(command)
    if found is None:
        return []
    words = []
    for word in command[found[1] :]:
        if word.endswith(".py") or word == "-m":
            break
        words.append(word)
    return words


def launcher_processes(command: Sequence[str]) -> int:
    """How many processes one run of `command` starts on its node: the launcher's count, 1 for anything else (and
    for a launcher that does not say: it then uses the devices it is given)."""
    found = launcher(command)
    if found is None:
        return 1
    value = _flag_value(_launcher_words(command), _LAUNCHERS[found[0]][0])
    try:
        return max(1, int(value)) if value is not None else 1
    except ValueError:
        return 1


def with_port(command: Sequence[str], port: int) -> list[str]:
    """The command with the launcher's rendezvous port set to `port` (after the launcher's name), unless the user
    set one; a plain command is returned unchanged (MASTER_PORT in its environment covers it)."""
    found = launcher(command)
    if found is None or _flag_value(_launcher_words(command), _PORT_FLAGS) is not None:
        return list(command)
    name, at = found
    return [*command[:at], _LAUNCHERS[name][1], str(port), *command[at:]]


def free_port(taken: set[int]) -> int:
    """A TCP port nobody listens on now and no other run of this comparison was given."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    raise RuntimeError("no free TCP port for a run's rendezvous")


@dataclass(frozen=True)
class DevicePlan:
    """The devices of this host, how many each run gets and how many runs go at a time."""

    devices: tuple[str, ...]
    per_run: int
    parallel: int

    def for_slot(self, slot: int) -> list[str]:
        """The devices of worker `slot` (0 <= slot < parallel): slots never overlap, so runs at the same time get
        disjoint sets. Empty on a host without devices."""
        if not self.devices:
            return []
        return list(self.devices[slot * self.per_run : (slot + 1) * self.per_run])


def plan_devices(
    command: Sequence[str], env: Mapping[str, str], gpus_per_run: int | None, parallel: int | None
) -> DevicePlan:
    """Checks --gpus_per_run and --parallel against the command and the host's devices, filling in the defaults."""
    for flag, value in (("--gpus_per_run", gpus_per_run), ("--parallel", parallel)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CompareError(f"{flag} must be an integer >= 1, got {value!r}")
    processes = launcher_processes(command)
    per_run = gpus_per_run if gpus_per_run is not None else processes
    if per_run < processes:
        raise CompareError(
            f"--gpus_per_run {per_run} is fewer than the {processes} processes the command's launcher starts per run: "
            f"give --gpus_per_run {processes} or more, or launch fewer processes"
        )
    devices = tuple(visible_devices(env))
    if not devices:
        return DevicePlan((), per_run, parallel or 1)
    if per_run > len(devices):
        raise CompareError(
            f"--gpus_per_run {per_run}, but only {len(devices)} device(s) are visible "
            f"(CUDA_VISIBLE_DEVICES / torch): {', '.join(devices)}"
        )
    fits = len(devices) // per_run
    if parallel is None:
        return DevicePlan(devices, per_run, fits)
    if parallel > fits:
        raise CompareError(
            f"--parallel {parallel} runs of {per_run} device(s) each need {parallel * per_run} devices, but "
            f"{len(devices)} are visible ({', '.join(devices)}): at most --parallel {fits}, or fewer --gpus_per_run"
        )
    return DevicePlan(devices, per_run, parallel)
