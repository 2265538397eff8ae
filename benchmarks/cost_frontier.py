"""Cheap AMP at <= 1.15x ERM's training time, against early-stopped ERM: smaller ascent fractions and late-phase AMP.

PROTOCOL (fixed before the runs, December 2026; issue 25 point 4)
- Goal: >= 80% of full AMP's test-error cut against ERM's BEST-VALIDATION CHECKPOINT (the baseline a user has for
  free), at <= 1.15x ERM's training CPU time over whole runs. The shipped cnn_long_noisy@1 (reference defaults,
  amp_ascent_fraction = 1/8) cost 1.20-1.24x in the frontier study (benchmarks/frontier.py, docs/cheap-amp.md).
- Model, optimizer, data, label noise, budgets: the frontier study's (the example's BatchNorm ResNet from scratch, SGD
  momentum 0.9, lr 0.05, wd 5e-4, batch 128, cosine; 20% of the training and validation labels replaced, test labels
  clean); AMP with the reference defaults (ε = 0.5 per tensor, ζ = 1, K = 1) otherwise untuned. BatchNorm running
  statistics under a fraction: the policy that a measurement on the check task chose first (issue 26: the descent
  pass's update, now the library's only policy; the measurement ran with a temporary switch that was not kept, its
  runs are in records/cost_frontier.jsonl and its numbers in docs/cheap-amp.md).
- Settings: f = 1/16 and f = 1/32 (16 and 32 times fewer ascent examples than the micro-batch: 8 and 4 of 128), and
  two late-phase settings after Zhou et al. (2024, "SAM efficiently selects flatter minima late in training": SAM
  only in the last 25 of 200 epochs nearly matched full SAM on CIFAR): full AMP in the last 12.5% of the steps, and
  f = 1/8 from 50% of the steps; f = 1/8 (cnn_long_noisy@1) for reference. Every setting is a candidate.
- SELECTION task cnn_mnist_noisy_long (MNIST 2k train, 1k validation, 2k test; 60 epochs), seeds 0, 1, 2: ERM, full
  AMP (rerun: time ratios from this code and machine) and every setting.
- Choice, on VALIDATION errors of the best-validation checkpoints (noisy labels, as a user has them): among the
  settings whose CPU time is <= 1.15x ERM's and which keep >= 80% of full AMP's validation cut (best-validation
  checkpoints), the lowest validation error. None qualifying: none is chosen (the report names the closest).
- CHECK task cnn_fmnist_noisy_long (Fashion-MNIST 5k / 2k / 10k test, 40 epochs), seeds 0, 1, 2, which the choice
  never looked at: ERM, full AMP, f = 1/8 (ERM and f = 1/8 are the BatchNorm measurement's runs, the same settings and
  policy) and the chosen setting unchanged. Reported: test error of the best-validation checkpoint and of the final
  weights, paired Δ vs ERM (mean ± std, seeds won), share of full AMP's cut (both), CPU time vs ERM.
- Ship: if the chosen setting meets the goal on the check task (>= 80% of full AMP's best-validation test-error cut
  at <= 1.15x ERM's CPU time), it becomes cnn_long_noisy@2 (this study's recommended.json entry); a late-phase
  setting cannot (a preset has no start relative to the run's length), and then nothing ships. Else nothing ships.

    python -m benchmarks.cost_frontier                 # 30-33 runs (6 are the BatchNorm runs), ~50 min on 2 cores
    python -m benchmarks.cost_frontier --cached-only   # the report from the recorded runs, training none

Records in benchmarks/results/records/cost_frontier.jsonl. Writes benchmarks/results/cost_frontier.{json,md,png} and,
when the chosen setting ships, the cnn_long_noisy entry of recommended.json; when runs are missing (--cached-only),
a partial report in outputs/cost_frontier/partial/ instead, and no recommendation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .methods import DEFAULTS, EIGHTH, ERM, REFERENCE, Method, amp
from .reports import command, frontier_plot, made_by_lines, write_recommendations
from .runner import OUTPUTS, RESULTS, RUNS, RunStore, Scheduler, Spec
from .stats import choose_cheap as choose_on_validation
from .stats import cut_shares
from .tasks import TASKS

SELECT, CHECK = "cnn_mnist_noisy_long", "cnn_fmnist_noisy_long"
SEEDS = (0, 1, 2)
TIME_GOAL = 1.15
FULL = DEFAULTS
SETTINGS: tuple[Method, ...] = (
    amp("f=1/16", ascent_fraction=1 / 16, **REFERENCE),
    amp("f=1/32", ascent_fraction=1 / 32, **REFERENCE),
    amp("last 12.5%", start=0.875, **REFERENCE),
    amp("f=0.125 from 50%", start=0.5, ascent_fraction=0.125, **REFERENCE),
    EIGHTH,
)
PRESET = "cnn_long_noisy"


def summary(done: dict[Spec, dict], task: str, methods: tuple[Method, ...]) -> dict[str, Any]:
    """The settings against ERM and full AMP on `task`; the headline is the best-validation checkpoints."""
    return {"task": task, **cut_shares(done, task, methods, FULL, SEEDS, headline_best_val=True, time_goal=TIME_GOAL)}


def choose(selection: dict[str, Any]) -> dict[str, Any]:
    """The protocol's rule, on the selection task's best-validation validation errors."""
    return choose_on_validation(selection["methods"], [m.name for m in SETTINGS], TIME_GOAL, best_val=True)


def preset_entry(check: dict[str, Any], chosen: Method | None) -> dict[str, Any] | None:
    """The recommended.json entry of cnn_long_noisy@2 when the chosen setting meets the goal on the check task."""
    row = check["methods"].get(chosen.name) if chosen else None
    if chosen is None or row is None or not row["meets_goal"] or chosen.start:
        return None
    p, pf = row["paired"], row["paired_final"]
    evidence = (
        "For CNNs trained long enough to memorise noisy training labels (ERM's final training loss near 0); "
        f"chosen on {SELECT} validation (best-validation checkpoints, <= {TIME_GOAL}x ERM's CPU time), checked on "
        f"{CHECK} ({TASKS[CHECK].title}, {TASKS[CHECK].epochs:g} epochs), seeds 0-2: {chosen.name} "
        f"{100 * p['mean']:+.2f}±{100 * p['std']:.2f} points test error vs ERM's best-validation checkpoint "
        f"({p['wins']}/3 seeds, {100 * row['share_of_full_cut_bv']:.0f}% of full AMP's cut), final weights "
        f"{100 * pf['mean']:+.2f}±{100 * pf['std']:.2f} ({pf['wins']}/3); {row['cpu_time_vs_erm']:.2f}x ERM's CPU time"
    )
    return {"args": chosen.kwargs, "evidence": evidence}


def _points(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _paired(p: dict[str, Any] | None) -> list[str]:
    """The cells of a paired difference: mean ± std in points, seeds won."""
    return [f"{100 * p['mean']:+.2f} ± {100 * p['std']:.2f}", f"{p['wins']}/{len(p['seeds'])}"] if p else ["", ""]


def markdown(report: dict[str, Any]) -> str:
    share = lambda x: "" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    lines = []
    for key in ("selection", "check"):
        part = report.get(key)
        if not part or not part.get("methods"):
            continue
        task = TASKS[part["task"]]
        lines += [
            f"### {key}: {part['task']} ({task.title}, {task.epochs:g} epochs)",
            "",
            "| setting | test error, best-val checkpoint | Δ vs ERM (best-val) | won | share of full cut (best-val) "
            "| test error, final weights | Δ vs ERM (final) | won | share (final) | val error, best-val | share of "
            "val cut (best-val) | CPU time vs ERM | passes model | train loss (final) | meets goal |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in part["methods"].items():
            cells = [
                name,
                f"{_points(m['test_error_mean'])} ± {_points(m['test_error_std'])}",
                *_paired(m.get("paired")),
                share(m.get("share_of_full_cut_bv")),
                f"{_points(m['final_test_error_mean'])} ± {_points(m['final_test_error_std'])}",
                *_paired(m.get("paired_final")),
                share(m.get("share_of_full_cut")),
                _points(m["val_error_mean"]),
                share(m.get("share_of_full_val_cut_bv")),
                f"{m.get('cpu_time_vs_erm', 1.0):.2f}",
                f"{m.get('passes_vs_erm', 1.0):.3f}",
                f"{m['final_train_loss_mean']:.3f}",
                "yes" if m.get("meets_goal") else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if "full_amp_relative_cut_best_val" in part:
            lines += [
                f"Full AMP's cut: {100 * part['full_amp_relative_cut_best_val']:.1f}% fewer test errors than ERM's "
                f"best-validation checkpoints, {100 * part['full_amp_relative_cut_final']:.1f}% fewer than its final "
                "weights.",
                "",
            ]
    if report.get("choice"):
        lines.append(f"Choice on the selection task's validation errors: {json.dumps(report['choice'])}")
    lines += ["", f"Ships as {PRESET}@2: {json.dumps(report.get('recommended'))}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached-only", action="store_true", help="write the report from recorded runs, train none")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=RUNS / "cost_frontier.jsonl", help="run records")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results")
    cli = parser.parse_args()
    started = time.perf_counter()
    scheduler = Scheduler(cli.workers, RunStore(cli.cache), cached_only=cli.cached_only)
    scheduler.add([Spec(SELECT, m, s) for m in (ERM, FULL, *SETTINGS) for s in SEEDS], 2)
    for method, priority in ((ERM, 1.5), (EIGHTH, 1.0), (FULL, 0.5)):  # what the check cannot do without first
        scheduler.add([Spec(CHECK, method, s) for s in SEEDS], priority)
    state: dict[str, Any] = {}

    def on_progress() -> None:
        if "choice" in state or any(
            Spec(SELECT, m, s) not in scheduler.done for m in (ERM, FULL, *SETTINGS) for s in SEEDS
        ):
            return
        state["choice"] = choose(summary(scheduler.done, SELECT, SETTINGS))
        print(f"choice: {state['choice']}", flush=True)
        state["chosen"] = next((m for m in SETTINGS if m.name == state["choice"]["chosen"]), None)
        if state["chosen"] is not None:
            scheduler.add([Spec(CHECK, state["chosen"], s) for s in SEEDS], 3)

    scheduler.run(on_progress)
    chosen: Method | None = state.get("chosen")
    checked = tuple(dict.fromkeys(m for m in (chosen, EIGHTH) if m is not None))
    report: dict[str, Any] = {
        "command": command("cost_frontier"),
        "protocol": __doc__.split("PROTOCOL", 1)[1].split("\n\n", 1)[0].strip(),
        "time_goal": TIME_GOAL,
        "selection": summary(scheduler.done, SELECT, SETTINGS),
        "choice": state.get("choice"),
        "check": summary(scheduler.done, CHECK, checked),
    }
    report["recommended"] = preset_entry(report["check"], chosen) if not scheduler.missing else None
    report["methods"] = {m.name: {**m.kwargs, "start_fraction": m.start} for m in (FULL, *SETTINGS)}
    report["runs_not_run"] = sorted(f"{s.task} seed {s.seed} {s.method.name}" for s in scheduler.missing)
    report["runs_made_by"] = scheduler.made_by()
    report["wall_seconds"] = round(time.perf_counter() - started)
    out = cli.out or (OUTPUTS / "cost_frontier" / "partial" if scheduler.missing else RESULTS)
    if scheduler.missing:
        print(f"{len(scheduler.missing)} runs have no record: a partial report in {out}, no recommendation")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost_frontier.json").write_text(json.dumps(report, indent=1, default=str, ensure_ascii=False) + "\n")
    text = markdown(report) + "\n" + "\n".join(made_by_lines(report["runs_made_by"], cli.cache))
    (out / "cost_frontier.md").write_text(text + "\n")
    parts = [report["selection"], report["check"]]
    frontier_plot(parts, out / "cost_frontier.png", (FULL.name,), (SELECT, CHECK), TIME_GOAL)
    if report["recommended"]:
        write_recommendations(out / "recommended.json", {PRESET: report["recommended"]})
    print(text)


if __name__ == "__main__":
    main()
