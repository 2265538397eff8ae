"""DDP with two CPU processes (gloo): see `ddp_worker.py` for what is checked. One launch for all the checks."""

from pathlib import Path

from helpers import torchrun_two_processes

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_ddp_two_processes_match_accumulation_and_communicate_like_the_trainer():
    done = torchrun_two_processes(str(WORKER))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count("ALL OK") == 2
    assert "communication per step AMP {'allreduce': 3, 'ddp_forward': 3} == ERM" in done.stdout
    assert done.stdout.count("overflow on one rank: every rank decided alike") == 2
    assert (
        done.stdout.count("momentum direction matches the accumulating reference, {'allreduce': 3, 'ddp_forward': 3}")
        == 2
    )
    assert done.stdout.count("reentrant checkpointing under DDP == reference, {'allreduce': 3, 'ddp_forward': 3}") == 2
