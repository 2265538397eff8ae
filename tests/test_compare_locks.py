"""Several comparisons on one output folder (amp_hf.compare.locks): a lock per run folder, taken atomically; a lock
whose owner is gone is taken over; two `python -m amp_hf.compare` at once on one folder train each run once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from amp_hf.compare import run_comparison
from amp_hf.compare.locks import OWNER_FILE, STALE_SECONDS, RunLock, lock_path
from amp_hf.compare.runs import DONE_FILE

FAKE = [sys.executable, str(Path(__file__).with_name("compare_fake_script.py"))]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_one_holder_at_a_time_and_a_gone_owner_is_taken_over(tmp_path):
    folder = tmp_path / "runs" / "erm" / "seed-0"
    lock, owner = RunLock.acquire(folder)
    assert lock is not None and owner is None and lock_path(folder).is_dir()
    again, owner = RunLock.acquire(folder)
    assert again is None and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    lock.release()
    assert not lock_path(folder).exists()

    path = lock_path(folder)
    path.mkdir()
    (path / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "token": "x"}))
    lock, _ = RunLock.acquire(folder)  # its process is gone: taken over
    assert lock is not None and json.loads((path / OWNER_FILE).read_text())["pid"] == os.getpid()
    lock.release()

    path.mkdir()
    (path / OWNER_FILE).write_text(json.dumps({"host": "another-node", "pid": 1, "token": "y"}))
    assert RunLock.acquire(folder)[0] is None  # another host, fresh heartbeat: alive
    old = time.time() - STALE_SECONDS - 60
    os.utime(path / OWNER_FILE, (old, old))
    lock, _ = RunLock.acquire(folder)  # its heartbeat stopped: taken over
    assert lock is not None
    os.utime(path / OWNER_FILE, (old, old))
    lock.beat()  # what the heartbeat thread does for every held lock
    assert time.time() - (path / OWNER_FILE).stat().st_mtime < 60
    lock.release()
    assert not list(folder.parent.glob("*.stale-*"))


def test_two_comparisons_on_one_folder_train_each_run_once(tmp_path):
    out, record = tmp_path / "cmp", tmp_path / "record.jsonl"
    argv = [sys.executable, "-m", "amp_hf.compare", "--seeds", "0", "1", "2", "--candidates", '{"amp_epsilon": 0.1}',
            "--output_dir", str(out), "--", *FAKE]  # fmt: skip
    env = {**os.environ, "FAKE_RECORD": str(record), "FAKE_SLEEP": "2"}
    jobs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [job.communicate(timeout=300) for job in jobs]
    starts = [json.loads(line) for line in record.read_text().splitlines()]
    starts = sorted((e["seed"], "amp_epsilon" in e["amp"]) for e in starts if e["event"] == "start")
    assert starts == sorted((s, amp) for s in (0, 1, 2) for amp in (False, True)), outputs  # each run once
    assert all((out / "runs" / c / f"seed-{s}" / DONE_FILE).is_file() for c in ("erm", "eps0.1") for s in (0, 1, 2))
    assert not list(out.glob("runs/*/*.lock")) and all("Traceback" not in err for _, err in outputs)
    assert any("being trained by another comparison" in err for _, err in outputs), outputs
    report = run_comparison(FAKE, seeds=[0, 1, 2], candidates=['{"amp_epsilon": 0.1}'], output_dir=out)
    assert not report.missing and report.seeds == [0, 1, 2]  # the finished runs, reported; nothing trained again
    assert len(record.read_text().splitlines()) == 12
