"""DDP with two CPU processes (gloo): see `ddp_worker.py` for what is checked. One launch for all the checks."""

import os
import subprocess
import sys
from pathlib import Path

from helpers import free_port

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_ddp_two_processes_match_accumulation_and_communicate_like_the_trainer():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    done = subprocess.run([*cmd, str(WORKER)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count("ALL OK") == 2
    assert "communication per step AMP {'allreduce': 3, 'ddp_forward': 3} == ERM" in done.stdout
