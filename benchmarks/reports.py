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


def frontier_plot(
    parts: list[dict[str, Any]],
    path: Path,
    full_names: tuple[str, ...],
    best_val_tasks: tuple[str, ...],
    time_goal: float,
) -> None:
    """Test error against training CPU time relative to ERM's, one panel per task summary (benchmarks.stats.cut_shares
    with its "task"): the headline is the best-validation checkpoints on `best_val_tasks`, else the final weights;
    ERM is a square, the full methods (`full_names`) diamonds, the time goal a dotted line."""
    from .tasks import TASKS

    parts = [p for p in parts if p.get("methods")]
    if not parts:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(parts), figsize=(6.5 * len(parts), 4.6), squeeze=False)
    for ax, part in zip(axes[0], parts):
        best_val = part["task"] in best_val_tasks
        for name, m in part["methods"].items():
            which = "test_error" if best_val else "final_test_error"
            x, y, e = m.get("cpu_time_vs_erm", 1.0), 100 * m[f"{which}_mean"], 100 * m[f"{which}_std"]
            ax.errorbar(x, y, yerr=e, fmt="s" if name == "ERM" else "D" if name in full_names else "o", capsize=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axvline(time_goal, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training CPU time / ERM's")
        kind = "best-validation checkpoints" if best_val else "final weights"
        ax.set_ylabel(f"test error %, {kind} (mean ± std, 3 seeds)")
        ax.set_title(f"{part['task']}: {TASKS[part['task']].title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
