"""What every study report carries (the command, the versions, the machine, which code made its runs), the shared
recommended.json format, and matplotlib set up for files."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def command(study: str) -> str:
    """The command line that rewrites this report."""
    return " ".join([f"python -m benchmarks.{study}", *sys.argv[1:]])


def versions() -> dict[str, str]:
    import accelerate
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def machine(workers: int | None = None) -> str:
    runs = f"; {workers} runs at a time, one thread each" if workers else ""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}{runs}"


def project_path(path: Path) -> str:
    """`path` relative to the project root when it lies inside (reports name files the same on every machine)."""
    root = Path(__file__).resolve().parents[1]
    path = path.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def made_by_lines(made_by: dict[str, int], store: Path) -> list[str]:
    """A report's closing lines: which code made its runs, and where their records are."""
    parts = "; ".join(f"{count} made by {label}" for label, count in made_by.items())
    return ["", "## Runs", "", f"{sum(made_by.values())} runs: {parts}. Records: `{project_path(store)}`."]


def recommendation_entry(args: dict[str, Any] | None, start: float, evidence: str) -> dict[str, Any]:
    """One entry of recommended.json: AMPTrainingArguments keywords (ERM: amp_inner_steps 0), the AMP start as a
    share of the run's steps when there is one, and the evidence in words."""
    entry: dict[str, Any] = {"args": dict(args) if args else {"amp_inner_steps": 0}}
    if start and args:
        entry["start_fraction"] = start
    entry["evidence"] = evidence
    return entry


def write_recommendations(path: Path, entries: dict[str, Any]) -> None:
    """Merges `entries` into recommended.json: each study owns its keys (transfer: the families; frontier: the
    regime presets)."""
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(entries)
    path.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")


def fewer_errors(relative_cut: float | None) -> str:
    """'12.3% fewer' / '4.5% more' test errors, from a relative cut (ERM − AMP) / ERM."""
    if relative_cut is None:
        return "n/a"
    return f"{100 * abs(relative_cut):.1f}% {'fewer' if relative_cut >= 0 else 'more'} test errors than ERM"


def pyplot():
    """matplotlib.pyplot drawing to files (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def study_wall_seconds(previous: Path, rows: list[dict], trained: int, started: float) -> int | None:
    """The study's wall time: this invocation's when it trained runs; when it only rewrote the report from the
    records, the time of the invocation that trained these runs (kept from the previous report of the same runs)."""
    if trained:
        return round(time.perf_counter() - started)
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return None
    before = sorted(old.get("run_keys", [r["key"] for r in old.get("runs", [])]))
    same = before in (sorted(r["key"] for r in rows), sorted(r.get("legacy_key", "") for r in rows))
    return old.get("study_wall_seconds", old.get("wall_seconds")) if same else None
