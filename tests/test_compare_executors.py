"""Where runs go (amp_hf.compare.executors): `--executor submitit` end to end through submitit's local executor (the
one AutoExecutor picks where SLURM is absent), a preempted job requeued by submitit and its run trained again from
an empty folder, any executor object with submit(fn) (a concurrent.futures pool here, as Ray's would be), and the
refusals of bad executor settings."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from amp_hf.compare import CompareError, run_comparison
from amp_hf.compare.cli import main
from amp_hf.compare.executors import parse_executor_params
from amp_hf.compare.runs import DONE_FILE

FAKE = [sys.executable, str(Path(__file__).with_name("compare_fake_script.py"))]
CANDIDATE = '{"amp_epsilon": 0.1}'


def _events(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def test_submitit_end_to_end_and_a_preempted_run_is_requeued(tmp_path):
    pytest.importorskip("submitit")
    out, record = tmp_path / "cmp", tmp_path / "record.jsonl"
    preempted: list[int] = []

    def preempt_erm() -> None:
        """Plays SLURM's preemption signal (SIGUSR2) to the job running ERM's run, once that run has started."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            starts = [e for e in _events(record) if e["event"] == "start" and not e["amp"].get("amp_epsilon")]
            if starts:
                os.kill(starts[0]["ppid"], signal.SIGUSR2)  # the submitit task that runs the command
                preempted.append(starts[0]["pid"])
                return
            time.sleep(0.1)

    with ThreadPoolExecutor(1) as side:
        preemption = side.submit(preempt_erm)
        report = run_comparison(
            FAKE, seeds=[0], candidates=[CANDIDATE], output_dir=out, executor="submitit",
            executor_params={"timeout_min": 5}, env={"FAKE_RECORD": str(record), "FAKE_SLEEP": "4"},
        )  # fmt: skip
        preemption.result()
    assert preempted and not report.missing and report.candidate("eps0.1").headline.values == {0: pytest.approx(0.9)}
    starts = [(e["seed"], bool(e["amp"].get("amp_epsilon"))) for e in _events(record) if e["event"] == "start"]
    assert sorted(starts) == [(0, False), (0, False), (0, True)]  # ERM's run started again in the requeued job
    ends = [e for e in _events(record) if e["event"] == "end"]
    assert len(ends) == 2 and preempted[0] not in {e["pid"] for e in ends}  # the preempted attempt never finished
    for name in ("erm", "eps0.1"):
        done = json.loads((out / "runs" / name / "seed-0" / DONE_FILE).read_text())
        assert done["attempts"] == 1 and done["devices"] == []
    assert (out / "submitit").is_dir()
    ports = {e["port"] for e in _events(record) if e["event"] == "start"}
    assert len(ports) == 3 and None not in ports  # each attempt picked a free port on its node


def test_an_executor_object_with_submit(tmp_path):
    with ThreadPoolExecutor(2) as pool:
        report = run_comparison(FAKE, seeds=[0, 1], candidates=[CANDIDATE], output_dir=tmp_path, executor=pool)
    assert not report.missing and report.seeds == [0, 1]


def test_bad_executor_settings_are_refused_before_anything_runs(tmp_path, capsys):
    pytest.importorskip("submitit")
    cases = [
        (dict(executor="slurm"), "--executor must be one of local, submitit"),
        (dict(executor="submitit"), "needs a time limit per run: --executor_params timeout_min=MINUTES"),
        (dict(executor="submitit", executor_params={"timeout_min": 5, "partitoin": "gpu"}), "--executor_params: "),
        (dict(executor_params={"timeout_min": 5}), "--executor_params is for --executor submitit"),
        (dict(executor=object()), "has no submit\\(fn\\) method"),
    ]
    for overrides, message in cases:
        with pytest.raises(CompareError, match=message):
            run_comparison(FAKE, seeds=[0], candidates=[CANDIDATE], output_dir=tmp_path, **overrides)
    assert parse_executor_params(["timeout_min=600", "slurm_partition=gpu", "gpus_per_node=2"]) == {
        "timeout_min": 600, "slurm_partition": "gpu", "gpus_per_node": 2}  # fmt: skip
    with pytest.raises(CompareError, match="key=value"):
        parse_executor_params(["600"])
    code = main(["--seeds", "0", "--candidates", CANDIDATE, "--output_dir", str(tmp_path), "--executor_params", "x",
                 "--", *FAKE])  # fmt: skip
    assert code == 2 and "--executor_params takes key=value" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
