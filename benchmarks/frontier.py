"""Cheap AMP where full AMP's gain is large: the cost/accuracy frontier in the long-training, noisy-label regime.

PROTOCOL (the selection, choice and transfer check were fixed before the evaluation runs; the regime-preset rule and
the transformer task were added while the transfer check ran, after the selection results were in. The budgets were
fixed by one pilot on tuning seed 1000, which checked only that ERM memorises its noisy training labels at the end:
final training loss 0.001 and 0.004)
- Model and optimizer: the CNN family of transfer.py (the example's BatchNorm ResNet from scratch, SGD momentum 0.9,
  lr 0.05, wd 5e-4, batch 128, cosine), AMP with the reference defaults (ε = 0.5 per tensor, ζ = 1, K = 1), untuned.
  Runs, data, label noise (20% of the training and validation labels, test labels clean) and the run cache are
  transfer.py's (benchmarks.runner); ERM and AMP share seeds 0, 1, 2.
- SELECTION task, cnn_mnist_noisy_long: MNIST-5k's 2k training images, 1k validation, 2k test; 60 epochs. Every cheap
  setting runs: ascent fraction f = 0.5, 0.25, 0.125; AMP every 2nd and every 4th step; AMP from 50% of the steps;
  and the combinations f = 0.5 and 0.25 every 2nd step and f = 0.25 from 50%.
- Headline: test error of the FINAL weights (a fixed schedule, no early stopping: the paper's protocol and the
  regime where ERM memorises); the best-validation checkpoint's test error is reported beside it. Share of full
  AMP's cut = (ERM − setting) / (ERM − full AMP), from the seed means. Time = training CPU seconds relative to ERM's
  (one thread per run; two runs share the machine, so wall time moves with whatever runs beside it), beside the
  passes model 1 + f·(1 − start)/interval and the wall-time ratio.
- Choice, on VALIDATION errors of the final weights (noisy validation labels, as a user has): among the cheap settings
  whose measured time is <= 1.3x ERM's, those keeping >= 80% of full AMP's validation cut; of those the lowest
  validation error. If none qualifies: none is recommended (the report says which came closest).
- TRANSFER check, cnn_fmnist_noisy_long: Fashion-MNIST 5k / 2k / 10k test, 40 epochs. ERM, full AMP and the chosen
  setting unchanged, seeds 0, 1, 2. The goal (>= 80% of full AMP's test-error cut at <= 1.3x ERM's time, 3 seeds)
  is judged on this task, which the choice never looked at.
- Regime preset (recommended.json "cnn_long_noisy", `--amp_preset cnn_long_noisy` in the examples): the chosen
  setting if its final-weights VALIDATION error beats ERM's on every seed of both CNN tasks, else ERM. The family's
  default ("cnn", from transfer.py's 15-epoch control) is left as it is: at short budgets AMP under-fits.
- TRANSFORMER task: the transfer study's best transformer result, text_speeches_noisy (MiniLM-L6, 800 sentences, 20%
  noise, 4 epochs; its candidate sam_global ε = 0.05 beat ERM on 3 of 3 seeds there), with the chosen setting's
  fraction, interval and start applied to that candidate; ERM and the full candidate are the study's cached runs.
  Fine-tuning for 4 epochs does not memorise, so its headline stays the study's: best-validation checkpoints.
  Added after the first report (not part of the choice): the same candidate with f = 0.25, Bahri et al.'s quarter,
  to see whether 4 of 32 sentences is too small an ascent batch there.

    python -m benchmarks.frontier                 # 54 runs (6 are the transfer study's), ~80 min on 2 CPU cores
    python -m benchmarks.frontier --cached-only   # the report from the recorded runs, training none

Runs are recorded with the transfer study's, in benchmarks/results/records/transfer.jsonl (benchmarks.runner). Writes
benchmarks/results/frontier_long.json, frontier_long.md, frontier_long.png, and its entry of recommended.json; when
runs are missing (--cached-only), a partial report in outputs/frontier/partial/ instead, and no recommendation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .methods import DEFAULTS, ERM, REFERENCE, SAM_GLOBAL, Method, amp
from .reports import command, frontier_plot, made_by_lines, write_recommendations
from .runner import OUTPUTS, RESULTS, RUNS, RunStore, Scheduler, Spec
from .stats import TIME_GOAL, choose_cheap, cut_shares
from .tasks import TASKS

SELECT, CHECK = "cnn_mnist_noisy_long", "cnn_fmnist_noisy_long"
SEEDS = (0, 1, 2)
CHEAP: tuple[Method, ...] = (
    amp("f=0.5", ascent_fraction=0.5, **REFERENCE),
    amp("f=0.25", ascent_fraction=0.25, **REFERENCE),
    amp("f=0.125", ascent_fraction=0.125, **REFERENCE),
    amp("every 2", interval=2, **REFERENCE),
    amp("every 4", interval=4, **REFERENCE),
    amp("from 50%", start=0.5, **REFERENCE),
    amp("f=0.5 every 2", ascent_fraction=0.5, interval=2, **REFERENCE),
    amp("f=0.25 every 2", ascent_fraction=0.25, interval=2, **REFERENCE),
    amp("f=0.25 from 50%", start=0.5, ascent_fraction=0.25, **REFERENCE),
)
FULL = DEFAULTS  # full AMP: the reference defaults on every step
TEXT = "text_speeches_noisy"
TEXT_FULL = SAM_GLOBAL
CHEAP_KNOBS = ("amp_ascent_fraction", "amp_interval")
PRESET = "cnn_long_noisy"


def on_text_candidate(cheap: Method) -> Method:
    """The transformer candidate made cheap the way `cheap` makes the reference defaults cheap."""
    knobs = {k: v for k, v in cheap.args if k in CHEAP_KNOBS}
    args = tuple(sorted({**dict(TEXT_FULL.args), **knobs}.items()))
    return Method(f"{TEXT_FULL.name} {cheap.name}", args, cheap.start)


TEXT_EXTRA = (on_text_candidate(next(m for m in CHEAP if m.name == "f=0.25")),)
"""Run on the transformer task besides the chosen setting (added after the first report; see the protocol)."""


def frontier(
    done: dict[Spec, dict], task: str, methods: tuple[Method, ...], full_method: Method = FULL
) -> dict[str, Any]:
    """Every method against ERM and full AMP on `task` (benchmarks.stats.cut_shares); the transformer task's
    headline is its best-validation checkpoints, the CNN tasks' their final weights."""
    return cut_shares(done, task, methods, full_method, SEEDS, headline_best_val=task == TEXT)


def choose(summary: dict[str, Any]) -> dict[str, Any]:
    """The choice rule of the protocol, on validation errors of the selection task."""
    return choose_cheap(summary["methods"], [m.name for m in CHEAP])


def regime_preset(done: dict[Spec, dict], chosen: Method | None) -> dict[str, Any]:
    """The recommended.json entry for the long, noisy-label CNN regime (the rule in the protocol)."""

    def val(task: str, method: Method) -> dict[int, float]:
        return {s.seed: r["final_val_error"] for s, r in done.items() if s.task == task and s.method == method}

    tasks = (SELECT, CHECK)
    beats = chosen is not None and all(
        len(val(t, chosen)) == len(SEEDS) and all(val(t, chosen)[s] < val(t, ERM)[s] for s in SEEDS) for t in tasks
    )
    if not beats:
        return {"args": {"amp_inner_steps": 0}, "evidence": f"no cheap setting beat ERM on validation on {tasks}"}
    evidence = []
    for task in tasks:
        m = frontier(done, task, (chosen,))["methods"]
        pf, full = m[chosen.name]["paired_final"], m[FULL.name]["paired_final"]
        evidence.append(
            f"{task} ({TASKS[task].title}, {TASKS[task].epochs:g} epochs), seeds 0-2, final weights: "
            f"{chosen.name} {100 * pf['mean']:+.2f}±{100 * pf['std']:.2f} points test error vs ERM "
            f"({pf['wins']}/3 seeds), full AMP {100 * full['mean']:+.2f}±{100 * full['std']:.2f}; "
            f"{m[chosen.name]['cpu_time_vs_erm']:.2f}x ERM's CPU time"
        )
    note = (
        "For CNNs trained long enough to memorise noisy training labels (ERM's final training loss near 0); "
        f"chosen on {SELECT} validation, checked on {CHECK}. "
    )
    return {"args": chosen.kwargs, "evidence": note + "; ".join(evidence)}


def markdown(report: dict[str, Any]) -> str:
    lines = []
    for key in ("selection", "transfer_check", "transformer"):
        part = report.get(key)
        if not part or not part.get("methods"):
            continue
        title = TASKS[part["task"]].title
        lines += [
            f"### {key.replace('_', ' ')}: {part['task']} ({title}, {TASKS[part['task']].epochs:g} epochs)",
            "",
            "| method | test error, final weights | paired Δ vs ERM (final) | seeds won | share of full cut "
            "| best-val test error | share (best-val) | val error (final) | CPU time vs ERM | wall vs ERM "
            "| passes model | train loss (final) | meets goal |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in part["methods"].items():
            pf = m.get("paired_final")
            share = lambda x: "" if x is None else f"{100 * x:.0f}%"  # noqa: E731
            delta = f"{100 * pf['mean']:+.2f} ± {100 * pf['std']:.2f}" if pf else ""
            wins = f"{pf['wins']}/{len(pf['seeds'])}" if pf else ""
            lines.append(
                f"| {name} | {100 * m['final_test_error_mean']:.2f} ± {100 * m['final_test_error_std']:.2f} "
                f"| {delta} | {wins} | {share(m.get('share_of_full_cut'))} "
                f"| {100 * m['test_error_mean']:.2f} ± {100 * m['test_error_std']:.2f} "
                f"| {share(m.get('share_of_full_cut_bv'))} | {100 * m['final_val_error_mean']:.2f} "
                f"| {m.get('cpu_time_vs_erm', 1.0):.2f} | {m.get('wall_time_vs_erm', 1.0):.2f} "
                f"| {m.get('passes_vs_erm', 1.0):.3f} | {m['final_train_loss_mean']:.3f} "
                f"| {'yes' if m.get('meets_goal') else ''} |"
            )
        lines.append("")
        if "full_amp_relative_cut_final" in part:
            lines += [
                f"Full AMP's cut: {100 * part['full_amp_relative_cut_final']:.1f}% fewer test errors than ERM with "
                f"the final weights, {100 * part['full_amp_relative_cut_best_val']:.1f}% with best-validation "
                "checkpoints.",
                "",
            ]
    choice = report.get("choice")
    if choice:
        lines.append(f"Choice on the selection task's validation errors: {json.dumps(choice)}")
    if report.get("recommended"):
        lines += ["", "recommended.json entry:", "", "```json", json.dumps(report["recommended"], indent=1), "```"]
    return "\n".join(lines)


def plot(report: dict[str, Any], out: Path) -> None:
    parts = [p for p in (report.get(k) for k in ("selection", "transfer_check", "transformer")) if p]
    frontier_plot(parts, out / "frontier_long.png", (FULL.name, TEXT_FULL.name), (TEXT,), TIME_GOAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached-only", action="store_true", help="write the report from recorded runs, train none")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=RUNS / "transfer.jsonl", help="run records (shared)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results")
    cli = parser.parse_args()
    started = time.perf_counter()
    scheduler = Scheduler(cli.workers, RunStore(cli.cache), cached_only=cli.cached_only)
    scheduler.add([Spec(SELECT, m, s) for m in (ERM, FULL, *CHEAP) for s in SEEDS], 2)
    scheduler.add([Spec(CHECK, m, s) for m in (ERM, FULL) for s in SEEDS], 1)
    state: dict[str, Any] = {}

    def on_progress() -> None:
        if "choice" in state:
            return
        if any(Spec(SELECT, m, s) not in scheduler.done for m in (ERM, FULL, *CHEAP) for s in SEEDS):
            return
        state["choice"] = choose(frontier(scheduler.done, SELECT, CHEAP))
        print(f"choice: {state['choice']}", flush=True)
        chosen = next((m for m in CHEAP if m.name == state["choice"]["chosen"]), None)
        if chosen is not None:
            scheduler.add([Spec(CHECK, chosen, s) for s in SEEDS], 3)
            text = (ERM, TEXT_FULL, on_text_candidate(chosen), *TEXT_EXTRA)
            scheduler.add([Spec(TEXT, m, s) for m in text for s in SEEDS], 0)

    scheduler.run(on_progress)
    report: dict[str, Any] = {
        "command": command("frontier"),
        "protocol": __doc__.split("PROTOCOL", 1)[1].split("\n\n", 1)[0].strip(),
        "selection": {"task": SELECT, **frontier(scheduler.done, SELECT, CHEAP)},
        "choice": state.get("choice"),
    }
    chosen = tuple(m for m in CHEAP if state.get("choice") and m.name == state["choice"]["chosen"])
    report["transfer_check"] = {"task": CHECK, **frontier(scheduler.done, CHECK, chosen)}
    text_methods = tuple(on_text_candidate(m) for m in chosen) + TEXT_EXTRA
    report["transformer"] = {"task": TEXT, **frontier(scheduler.done, TEXT, text_methods, TEXT_FULL)}
    report["recommended"] = {PRESET: regime_preset(scheduler.done, chosen[0] if chosen else None)}
    report["methods"] = {m.name: {**m.kwargs, "start_fraction": m.start} for m in (FULL, *CHEAP)}
    report["runs_not_run"] = sorted(f"{s.task} seed {s.seed} {s.method.name}" for s in scheduler.missing)
    report["runs_made_by"] = scheduler.made_by()
    report["wall_seconds"] = round(time.perf_counter() - started)
    out = cli.out or (OUTPUTS / "frontier" / "partial" if scheduler.missing else RESULTS)
    if scheduler.missing:
        print(f"{len(scheduler.missing)} runs have no record: a partial report in {out}, no recommendation")
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier_long.json").write_text(json.dumps(report, indent=1, default=str, ensure_ascii=False) + "\n")
    text = markdown(report) + "\n" + "\n".join(made_by_lines(report["runs_made_by"], cli.cache))
    (out / "frontier_long.md").write_text(text + "\n")
    plot(report, out)
    if not scheduler.missing:
        write_recommendations(out / "recommended.json", report["recommended"])
    print(text)


if __name__ == "__main__":
    main()
