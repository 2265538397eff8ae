"""DeepSpeed ZeRO-1/2/3 with two CPU processes: see `deepspeed_worker.py` for what is checked. One launch for all."""

from pathlib import Path

import pytest
from helpers import torchrun_two_processes

WORKER = Path(__file__).with_name("deepspeed_worker.py")


def test_deepspeed_zero_1_2_3_match_the_reference_and_resume():
    pytest.importorskip("deepspeed", reason="installed by `make test` (amp-hf[deepspeed])")
    done = torchrun_two_processes(str(WORKER), timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count("ALL OK") == 2
    assert done.stdout.count("== one Δ per process's micro-batch") == 4
    assert done.stdout.count("== one process on the global micro-batches") == 4
    assert done.stdout.count("bf16 engine trains with AMP") == 4
    assert done.stdout.count("checkpoint resumed == uninterrupted run") == 4
