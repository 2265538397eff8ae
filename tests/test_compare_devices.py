"""Devices per run (amp_hf.compare.devices), with simulated devices (CUDA_VISIBLE_DEVICES=0,1,2,3 on a CPU machine):
the defaults, the refusals, and runs at the same time holding disjoint device sets of the right size and distinct
rendezvous ports (a fake command records what it was given, and when)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from amp_hf.compare import CompareError, run_comparison
from amp_hf.compare.devices import launcher_processes, plan_devices, with_port

FAKE = [sys.executable, str(Path(__file__).with_name("compare_fake_script.py"))]
FOUR = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_the_processes_of_a_launcher():
    assert launcher_processes(["python", "train.py"]) == 1
    assert launcher_processes(["accelerate", "launch", "--num_processes", "2", "train.py", "--num_processes", "8"]) == 2
    assert launcher_processes(["accelerate", "launch", "--num_processes=4", "train.py"]) == 4
    assert launcher_processes(["torchrun", "--nproc-per-node", "2", "-m", "pkg.train"]) == 2
    assert launcher_processes(["python", "-m", "torch.distributed.run", "--nproc_per_node", "3", "t.py"]) == 3
    assert launcher_processes(["deepspeed", "--num_gpus", "2", "t.py"]) == 2
    assert launcher_processes(["accelerate", "launch", "train.py"]) == 1  # says nothing: uses what it is given


def test_the_rendezvous_port_goes_to_the_launcher():
    assert with_port(["accelerate", "launch", "--num_processes", "2", "t.py", "--x"], 4242) == [
        "accelerate", "launch", "--main_process_port", "4242", "--num_processes", "2", "t.py", "--x"]  # fmt: skip
    assert with_port(["torchrun", "--nproc_per_node", "2", "t.py"], 4242)[:3] == ["torchrun", "--master_port", "4242"]
    assert with_port(["python", "-m", "accelerate.commands.launch", "t.py"], 7)[3:5] == ["--main_process_port", "7"]
    mine = ["torchrun", "--master_port=1234", "t.py"]
    assert with_port(mine, 4242) == mine  # the user's port is kept
    assert with_port(["python", "t.py"], 4242) == ["python", "t.py"]  # MASTER_PORT in its environment covers it


def test_defaults_and_refusals():
    python = ["python", "t.py"]
    two = ["accelerate", "launch", "--num_processes", "2", "t.py"]
    plan = plan_devices(python, FOUR, None, None)
    assert (plan.per_run, plan.parallel) == (1, 4) and [plan.for_slot(s) for s in range(4)] == [
        ["0"],
        ["1"],
        ["2"],
        ["3"],
    ]
    plan = plan_devices(two, FOUR, None, None)
    assert (plan.per_run, plan.parallel, plan.for_slot(1)) == (2, 2, ["2", "3"])
    assert plan_devices(python, {"CUDA_VISIBLE_DEVICES": "5,7"}, None, 1).for_slot(0) == ["5"]
    assert plan_devices(python, {"CUDA_VISIBLE_DEVICES": ""}, None, None).parallel == 1  # CPU: one at a time
    assert plan_devices(python, {"CUDA_VISIBLE_DEVICES": ""}, None, 3).for_slot(2) == []
    with pytest.raises(CompareError, match="fewer than the 2 processes the command's launcher starts"):
        plan_devices(two, FOUR, 1, None)
    with pytest.raises(CompareError, match=r"--parallel 3 runs of 2 device.* need 6 devices, but 4 are visible"):
        plan_devices(two, FOUR, None, 3)
    with pytest.raises(CompareError, match="--gpus_per_run 5, but only 4 device"):
        plan_devices(python, FOUR, 5, None)
    with pytest.raises(CompareError, match="--gpus_per_run must be an integer >= 1"):
        plan_devices(python, FOUR, 0, None)


def _runs(record: Path) -> list[dict]:
    """One entry per run: its devices, port and (start, end) times."""
    events = [json.loads(line) for line in record.read_text().splitlines()]
    runs = {}
    for e in events:
        key = (e["seed"], json.dumps(e["amp"], sort_keys=True))
        runs.setdefault(key, {"devices": e["devices"], "port": e["port"]})[e["event"]] = e["time"]
    return list(runs.values())


def test_runs_at_the_same_time_get_disjoint_devices_and_their_own_ports(tmp_path):
    record = tmp_path / "record.jsonl"
    env = {**FOUR, "FAKE_RECORD": str(record), "FAKE_SLEEP": "1.5"}
    run_comparison(FAKE, seeds=[0, 1], candidates=['{"amp_epsilon": 0.1}'], output_dir=tmp_path / "a", env=env,
                   gpus_per_run=2)  # fmt: skip
    runs = _runs(record)
    assert len(runs) == 4 and all(len(r["devices"].split(",")) == 2 for r in runs)
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]
    overlapping = [(a, b) for a, b in pairs if a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping  # --parallel defaulted to 4 devices ÷ 2: runs did go two at a time
    for a, b in overlapping:
        assert not set(a["devices"].split(",")) & set(b["devices"].split(",")) and a["port"] != b["port"]
    record.unlink()
    run_comparison(FAKE, seeds=[0, 1], candidates=['{"amp_epsilon": 0.1}'], output_dir=tmp_path / "b",
                   env={**env, "FAKE_SLEEP": "0"}, parallel=1)  # fmt: skip
    assert [r["devices"] for r in _runs(record)] == ["0"] * 4  # a plain python run sees one device, not four
    done = json.loads((tmp_path / "b" / "runs" / "erm" / "seed-0" / "compare_done.json").read_text())
    assert done["devices"] == ["0"]
