"""Stopping a comparison (amp_hf.compare.attempt and plan): Ctrl-C or SIGTERM to `python -m amp_hf.compare` ends
every process its runs started, also through a wrapper script (`-- bash run.sh`, whose python child a plain
terminate() would leave training), and says one line, "N runs stopped; rerun to resume", without a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amp_hf.compare.runs import DONE_FILE

FAKE_SCRIPT = Path(__file__).with_name("compare_fake_script.py")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie has stopped; only its parent's wait is missing


@pytest.mark.parametrize("signum, parallel", [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_a_stop_through_a_wrapper_script_leaves_no_process(tmp_path, signum, parallel):
    wrapper, record, out = tmp_path / "run.sh", tmp_path / "record.jsonl", tmp_path / "cmp"
    wrapper.write_text(f'#!/bin/bash\n"{sys.executable}" "{FAKE_SCRIPT}" "$@"\necho "the wrapper goes on"\n')
    argv = [sys.executable, "-m", "amp_hf.compare", "--seeds", "0", "1", "--candidates", '{"amp_epsilon": 0.1}',
            "--output_dir", str(out), "--parallel", str(parallel), "--", "bash", str(wrapper)]  # fmt: skip
    env = {**os.environ, "FAKE_RECORD": str(record), "FAKE_SLEEP": "300"}
    compare = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (record.exists() and len(record.read_text().splitlines()) >= parallel):
        assert compare.poll() is None and time.monotonic() < deadline, compare.communicate()
        time.sleep(0.2)
    compare.send_signal(signum)
    _, err = compare.communicate(timeout=60)
    assert compare.returncode == 128 + signum
    assert (
        err.strip().splitlines()[-1]
        == f"[compare] {parallel} run{'s' if parallel > 1 else ''} stopped; rerun to resume"
    )
    assert "Traceback" not in err and "the wrapper goes on" not in "".join(p.read_text() for p in out.rglob("*.log"))
    started = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(started) == parallel  # nothing started after the stop
    for run in started:
        assert _gone(run["pid"]) and _gone(run["ppid"])  # the training process and its wrapper
    assert not list(out.rglob(DONE_FILE)) and not list(out.glob("runs/*/*.lock"))


def test_ctrl_c_outside_the_runs_is_one_line_too(monkeypatch, capsys):
    """Ctrl-C while the command's --help is checked, or while the report is written: no traceback either."""
    from amp_hf.compare import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_comparison", interrupted)
    assert cli.main(["--seeds", "0", "--candidates", "cnn_long_noisy", "--output_dir", "x", "--", "python"]) == 130
    assert capsys.readouterr().err == "[compare] stopped, no run in flight; rerun to resume\n"
