"""One lock per run folder, so that several comparisons on one output folder (cluster jobs spread over seeds, or a
second terminal) train each run once: whoever holds `runs/<candidate>/seed-<seed>.lock/` trains that run, the others
leave it alone and report it when it is finished.

The lock is a directory made with `os.mkdir`, which is atomic on local and network file systems: of two comparisons
that try at once, one gets it. It holds `owner.json` (host, pid, a random token) whose modification time is the
owner's heartbeat, refreshed every HEARTBEAT_SECONDS while the run goes. A lock whose owner is gone is taken over: on
this host, when its pid no longer runs; for another host, when its heartbeat is older than STALE_SECONDS. Taking over
renames the lock away first (atomic too) and checks that it renamed the one it judged stale, so two comparisons never
both take over one lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0
OWNER_FILE = "owner.json"


def lock_path(run_folder: Path) -> Path:
    """Beside the run folder, not inside it: the run folder is deleted and made again while the lock is held."""
    return run_folder.with_name(run_folder.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
        owner["heartbeat"] = (path / OWNER_FILE).stat().st_mtime
        return owner
    except (OSError, ValueError, TypeError):
        return None


def describe(owner: dict | None) -> str:
    if owner is None:
        return "another comparison"
    return f"another comparison (host {owner.get('host')}, pid {owner.get('pid')})"


class RunLock:
    """A held lock on one run folder."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self.token = token

    @classmethod
    def acquire(cls, run_folder: Path) -> tuple[RunLock | None, dict | None]:
        """(the lock, None) when this process now holds it, else (None, its owner's record)."""
        path = lock_path(run_folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            token = uuid.uuid4().hex
            try:
                os.mkdir(path)
            except FileExistsError:
                owner = _read_owner(path)
                if owner is None:  # being made right now (or written by a crashed owner): judge by the folder's age
                    try:
                        young = time.time() - path.stat().st_mtime < STALE_SECONDS
                    except OSError:
                        continue
                    if young:
                        return None, None
                elif not _gone(owner):
                    return None, owner
                _take_away(path, owner)
                continue
            record = {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "since": time.time()}
            (path / OWNER_FILE).write_text(json.dumps(record) + "\n")
            return cls(path, token), None
        return None, _read_owner(path)

    def beat(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path / OWNER_FILE)

    def release(self) -> None:
        owner = _read_owner(self.path)
        if owner is not None and owner.get("token") == self.token:
            shutil.rmtree(self.path, ignore_errors=True)


def _gone(owner: dict) -> bool:
    """Whether a lock's owner has stopped: a dead pid on this host, a stale heartbeat elsewhere."""
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        return not _alive(owner["pid"])
    return time.time() - float(owner.get("heartbeat", 0)) > STALE_SECONDS


def _take_away(path: Path, judged: dict | None) -> None:
    """Moves a dead owner's lock out of the way; puts it back if, meanwhile, it had become someone else's."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except OSError:
        return  # someone else took it away first
    moved = _read_owner(aside)
    if judged is not None and (moved is None or moved.get("token") != judged.get("token")):
        with contextlib.suppress(OSError):  # a live lock made between our look and our rename: give it back
            os.rename(aside, path)
        return
    shutil.rmtree(aside, ignore_errors=True)


_held: set[RunLock] = set()
_held_guard = threading.Lock()
_beating: threading.Thread | None = None


@contextmanager
def heartbeat(lock: RunLock) -> Iterator[None]:
    """Keeps `lock`'s heartbeat fresh while the block runs: one daemon thread per process refreshes every held lock
    every HEARTBEAT_SECONDS (a comparison that dies stops beating, and another host may then take its locks)."""
    global _beating
    with _held_guard:
        _held.add(lock)
        if _beating is None:
            _beating = threading.Thread(target=_beat_forever, name="compare-lock-heartbeat", daemon=True)
            _beating.start()
    try:
        yield
    finally:
        with _held_guard:
            _held.discard(lock)


def _beat_forever() -> None:
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        with _held_guard:
            held = list(_held)
        for lock in held:
            lock.beat()
