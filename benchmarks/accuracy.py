"""What AMP buys: ERM vs AMP on the same models, data, budget and seeds; test error, cost frontier, loss curves.

Three tasks on small training sets without augmentation (so ERM over-fits and a regulariser has something to do):
  cnn   the example's BatchNorm ResNet from scratch, 5k Fashion-MNIST images, SGD (the paper's setting, scaled down)
  vit   the example's vision transformer from scratch (a small config), 2k of the same images, AdamW
  text  the pretrained MiniLM-L6 fine-tuned on 800 Rotten Tomatoes snippets, AdamW
Vision runs are tested on the full 10k Fashion-MNIST test set, text on the held-out 10% of Rotten Tomatoes.

Methods: ERM (transformers.Trainer); AMP with the reference defaults (ε = 0.5 per tensor); AMP with each ball of the
task's grid (per-tensor, global, relative), ε chosen on the validation split with a tuning seed that is not an
evaluation seed (the test set is never looked at for a choice); on the evaluation seeds, the best of these on
validation (the recommended setting) and the best global ball; and, for the recommended setting, the cost frontier:
amp_interval 2 and 4, AMP in the second half only, and K = 2 (CNN only).

    python -m benchmarks.accuracy                 # the whole study: ~65 min on 2 CPU cores
    python -m benchmarks.accuracy --quick         # a smoke run of every code path in 1-2 minutes
    python -m benchmarks.accuracy --cached-only   # the report from the recorded runs, training none (~15 s)
    python -m benchmarks.accuracy --tasks cnn --seeds 0 1 2 3 4

Runs go two at a time (one thread each) and are recorded in benchmarks/results/records/accuracy.jsonl (--cache),
keyed by their settings and the code that made them (benchmarks.runner), so an interrupted study resumes where it
stopped.
Writes benchmarks/results/accuracy.json (the summary, the command, versions, machine, which code made the runs),
accuracy.md (the table) and the plots accuracy.png, frontier.png and loss_curves.png. The tasks are benchmarks.tasks'
acc_cnn, acc_vit and acc_text; a run keeps its final weights (no early stopping), its per-epoch validation curve is
taken on the first 1k validation examples.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from amp_hf.config import AMPConfig

from .methods import ERM, Method, passes_per_step
from .reports import command, machine, made_by_lines, project_path, pyplot, study_wall_seconds, versions
from .runner import OUTPUTS, RESULTS, RUNS, Protocol, RunStore, Scheduler, Spec
from .stats import paired_stats, share_of_cut
from .tasks import FAMILIES, TASKS

TUNING_SEED = 1000
"""The seed of the ε-selection runs: not an evaluation seed, so the choice is not fitted to the reported runs."""
PROTOCOL = Protocol(keep_best=False, curve_size=1000, logs_per_epoch=4)
"""Final weights are reported; the per-epoch curve uses the first 1k validation examples; four logs per epoch."""


# ---------------------------------------------------------------------------------------------------- a run
@dataclass(frozen=True)
class RunSpec:
    """One run of this study, by the knobs its choices turn (the ball, ε, the frontier's schedule)."""

    task: str
    method: str  # "erm" or "amp"
    seed: int
    quick: bool = False
    epsilon: float = AMPConfig.epsilon  # the reference defaults, as AMPTrainingArguments has them
    norm: str = AMPConfig.norm
    inner_lr: float = AMPConfig.inner_lr
    inner_steps: int = AMPConfig.inner_steps
    interval: int = 1
    start: float = 0.0
    """amp_start_step as a fraction of the run's optimizer steps (AMP in the late phase only)."""
    exclude: tuple[str, ...] = ()

    def label(self) -> str:
        if self.method == "erm":
            return "ERM"
        extra = "".join(
            [
                f", K={self.inner_steps}" if self.inner_steps != 1 else "",
                f", every {self.interval}" if self.interval != 1 else "",
                f", from {self.start:.0%}" if self.start else "",
            ]
        )
        skip = f", not {'/'.join(self.exclude)}" if self.exclude else ""
        skip += f", ζ={self.inner_lr:g}" if self.inner_lr != 1 else ""
        return f"AMP {self.norm} ε={self.epsilon:g}{skip}{extra}"

    def run(self) -> Spec:
        """The runner's spec: the task acc_<task>, the method named by the label, this study's protocol."""
        if self.method == "erm":
            method = ERM
        else:
            args = {
                "amp_epsilon": self.epsilon,
                "amp_norm": self.norm,
                "amp_inner_lr": self.inner_lr,
                "amp_inner_steps": self.inner_steps,
                "amp_interval": self.interval,
                "amp_exclude": self.exclude,
            }
            method = Method(self.label(), tuple(sorted(args.items())), self.start)
        return Spec(f"acc_{self.task}", method, self.seed, self.quick, PROTOCOL)


@dataclass(frozen=True)
class StudyTask:
    """What this study varies per task; the data, model and optimizer are benchmarks.tasks' acc_<name>."""

    grids: dict[str, tuple[float, ...]]
    """ε candidates per `amp_norm`, tried on validation with the tuning seed."""
    exclude: tuple[str, ...] = ()
    """Parameters left unperturbed by the tuned AMP methods (the defaults perturb everything, as the reference)."""
    frontier: tuple[dict[str, Any], ...] = ()
    """Variants of the recommended setting for the cost/accuracy frontier (RunSpec fields to change)."""


FRONTIER = ({"interval": 2}, {"interval": 4}, {"start": 0.5}, {"inner_steps": 2})
"""Cheaper (and one dearer) variants of the recommended setting: every 2nd / 4th step, the second half of training
only, and two ascent steps."""

STUDY_TASKS: dict[str, StudyTask] = {
    "cnn": StudyTask(
        grids={"tensor": (0.02, 0.05), "global": (0.1, 0.2), "relative": (0.005, 0.01)},
        frontier=FRONTIER,
    ),
    "vit": StudyTask(
        grids={"tensor": (0.002, 0.005), "global": (0.02, 0.05), "relative": (0.001, 0.003)},
        frontier=FRONTIER[:3],
    ),
    "text": StudyTask(
        # A text run costs ~4 vision runs, so the grid is small: the relative ε from single-seed pilots, and two
        # global radii around the relative ball's total ‖Δ‖ (0.1-0.2 here). The embedding layer is left unperturbed:
        # the word embeddings' gradient touches only the batch's rows, so their per-tensor ball puts the whole radius
        # on those rows (relative ε = 0.001 with the embeddings perturbed: 35.0% test error, without: 27.9%, ERM
        # 22.6%; seed 0).
        grids={"relative": (0.001,), "global": (0.01, 0.05)},
        exclude=("embeddings",),
        frontier=FRONTIER[:3],
    ),
}


def passes(spec: RunSpec) -> float:
    """Forward/backward passes per step (benchmarks.methods' model): the frontier's cost axis; the wall times of the
    study's own runs are reported too, but they ran two at a time on a shared machine."""
    method = spec.run().method
    return passes_per_step(method.kwargs, method.start)


# ------------------------------------------------------------------------------------------------ the study
def plan(
    task_name: str, seeds: list[int], quick: bool
) -> tuple[list[RunSpec], Callable[[dict], tuple[list[RunSpec], str]]]:
    """The runs that need no choice (ERM, the defaults, the ε grid), and a function giving the rest from their
    results (each norm's ε picked on validation, then the frontier of the best of them) and the best one's label."""
    task = STUDY_TASKS[task_name]
    tuning_seed = seeds[0] if quick else TUNING_SEED  # quick: the grid runs double as the tuned runs
    erm = [RunSpec(task_name, "erm", s, quick) for s in seeds]
    defaults = [RunSpec(task_name, "amp", s, quick) for s in seeds]  # AMPConfig's defaults: ε = 0.5 per tensor
    grid = [
        RunSpec(task_name, "amp", tuning_seed, quick, epsilon=eps, norm=norm, exclude=task.exclude)
        for norm, values in task.grids.items()
        for eps in (values[:1] if quick else values)
    ]
    choose = len(grid) > 1  # a single candidate needs no tuning runs
    first = [*erm, *defaults, *([RunSpec(task_name, "erm", tuning_seed, quick), *grid] if choose else [])]

    def second(done: dict[RunSpec, dict]) -> tuple[list[RunSpec], str]:
        best = tuned_choices(task_name, grid, done) if choose else {grid[0].norm: grid[0]}
        winner = min(best.values(), key=lambda spec: done[spec]["val_error"]) if choose else grid[0]
        # The evaluation seeds run the winner and the global-norm variant (the paper's ball); the other balls' ε
        # choices are reported from the tuning seed only, which saves 3 or 6 runs per task.
        finalists = {winner, *([best["global"]] if "global" in best else [])}
        tuned = [replace(spec, seed=s) for spec in sorted(finalists, key=RunSpec.label) for s in seeds]
        frontier = [replace(winner, seed=s, **change) for change in task.frontier for s in seeds]
        return tuned + frontier, winner.label()

    return first, second


def tuned_choices(task_name: str, grid: list[RunSpec], done: dict[RunSpec, dict]) -> dict[str, RunSpec]:
    """For each norm, the grid run with the lowest validation error (ties: the smaller ε)."""
    best: dict[str, RunSpec] = {}
    for spec in grid:
        current = best.get(spec.norm)
        if current is None or done[spec]["val_error"] < done[current]["val_error"]:
            best[spec.norm] = spec
    return best


def summarise(
    task_name: str, seeds: list[int], done: dict[RunSpec, dict], second: tuple[list[RunSpec], str]
) -> dict[str, Any]:
    """Per method: test error mean ± std over seeds, the paired difference to ERM, the relative error reduction,
    the time ratio to ERM (median of per-seed ratios)."""
    by_label: dict[str, dict[int, dict]] = {}
    passes_of: dict[str, float] = {}
    for spec, row in done.items():
        if spec.task == task_name and spec.seed in seeds:
            by_label.setdefault(row["method"], {})[spec.seed] = row
            passes_of[row["method"]] = passes(spec)
    erm = by_label["ERM"]
    methods = {}
    later, recommended = second
    tuned = [spec for spec in later if spec.interval == 1 and spec.inner_steps == 1 and not spec.start]
    # ERM, the defaults, the recommended setting, the other tuned one, then the frontier in the task's order (not
    # in the order the runs happen to have been recorded)
    order = ["ERM", RunSpec(task_name, "amp", 0).label(), recommended]
    order += sorted({s.label() for s in tuned} - {recommended}) + [s.label() for s in later if s not in tuned]
    for label, rows in sorted(by_label.items(), key=lambda item: (order + [item[0]]).index(item[0])):
        paired = paired_stats(
            {s: r["test_error"] for s, r in erm.items()}, {s: r["test_error"] for s, r in rows.items()}
        )
        errors = [rows[s]["test_error"] for s in seeds if s in rows]
        erm_mean = statistics.mean(erm[s]["test_error"] for s in seeds)
        methods[label] = {
            "test_error_mean": statistics.mean(errors),
            "test_error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
            "test_errors": errors,
            "val_error_mean": statistics.mean(rows[s]["val_error"] for s in seeds if s in rows),
            "paired_difference_mean": paired["mean"],
            "paired_difference_std": paired["std"],
            "relative_error_reduction": (erm_mean - statistics.mean(errors)) / erm_mean,
            "time_vs_erm": statistics.median(rows[s]["train_seconds"] / erm[s]["train_seconds"] for s in seeds),
            "passes_vs_erm": passes_of[label],
            "wins_over_erm": paired["wins"],
        }
    frontier = {}
    if len(later) > len(tuned):
        full = methods[recommended]["paired_difference_mean"]
        for label, m in methods.items():
            if label == recommended or label.startswith(recommended + ","):
                frontier[label] = {
                    "passes_vs_erm": m["passes_vs_erm"],
                    "time_vs_erm": m["time_vs_erm"],
                    "test_error_mean": m["test_error_mean"],
                    "share_of_full_gain": share_of_cut(0.0, full, m["paired_difference_mean"]),
                }
    tuning = dict(  # label → validation error of the ε-selection runs, by label
        sorted(
            (row["method"], row["val_error"])
            for spec, row in done.items()
            if spec.task == task_name and spec.seed == TUNING_SEED
        )
    )
    return {
        "title": TASKS[f"acc_{task_name}"].title,
        "validation_error_at_tuning_seed": tuning,
        "methods": methods,
        "tuned": sorted({replace(s, seed=0).label() for s in tuned}),
        "recommended": recommended,
        "frontier": frontier,
    }


# ---------------------------------------------------------------------------------------------------- plots
def plot(summary: dict[str, Any], done: dict[RunSpec, dict], seeds: list[int], out: Path) -> None:
    plt = pyplot()
    tasks = list(summary)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.8), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        variants = set(summary[name]["frontier"]) - {summary[name]["recommended"]}
        methods = {k: v for k, v in summary[name]["methods"].items() if k not in variants}
        labels = list(methods)
        for i, label in enumerate(labels):
            m = methods[label]
            errors = [100 * e for e in m["test_errors"]]
            recommended = label == summary[name]["recommended"]
            color = "tab:gray" if label == "ERM" else "tab:green" if recommended else "tab:blue"
            ax.bar(i, 100 * m["test_error_mean"], yerr=100 * m["test_error_std"], color=color, alpha=0.6, capsize=4)
            ax.scatter([i] * len(errors), errors, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("test error (%)")
        erm = 100 * methods["ERM"]["test_error_mean"]
        low = min(100 * min(m["test_errors"]) for m in methods.values())
        # The reference defaults can be far off (chance level on the ViT): cut the axis above the other methods, so
        # their differences stay visible, and write the cut bars' means on them.
        tops = [100 * max(m["test_errors"]) for m in methods.values()]
        top = max(sorted(tops)[-2] if len(tops) > 1 else tops[0], erm) + 2
        ax.set_ylim(max(0, low - 2), max(top, low + 1))
        for i, label in enumerate(labels):
            mean = 100 * methods[label]["test_error_mean"]
            if mean > top:
                ax.annotate(f"{mean:.1f}%", (i, top), xytext=(0, -12), textcoords="offset points", ha="center")
        ax.axhline(erm, color="tab:gray", lw=0.8, ls="--")
        ax.set_title(f"{name}: mean ± std over {len(seeds)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        methods = summary[name]["methods"]
        points = {"ERM": methods["ERM"], **{k: methods[k] for k in summary[name]["frontier"]}}
        for label, m in points.items():
            x, y = m["passes_vs_erm"], 100 * m["test_error_mean"]
            ax.errorbar(x, y, yerr=100 * m["test_error_std"], fmt="o", capsize=3)
            variant = label.removeprefix(summary[name]["recommended"]).removeprefix(", ")
            short = "ERM" if label == "ERM" else variant or "every step"
            ax.annotate(short, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("cost: forward/backward passes per step, ERM = 1")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"{name}: {summary[name]['recommended']}, mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 6.5), squeeze=False)
    for col, name in enumerate(tasks):
        recommended = summary[name]["recommended"]
        for spec, row in sorted(done.items(), key=lambda item: item[1]["method"]):
            if spec.task != name or spec.seed != seeds[0] or row["method"] not in ("ERM", recommended):
                continue
            color = "tab:gray" if row["method"] == "ERM" else "tab:blue"
            epochs, losses = zip(*row["logged_loss"])
            axes[0][col].plot(epochs, losses, color=color, label=row["method"])
            axes[1][col].plot(
                row["curve"]["epoch"], row["curve"]["val_loss"], color=color, marker=".", label=row["method"]
            )
        axes[0][col].set_title(f"{name}: training loss (clean batch), seed {seeds[0]}", fontsize=9)
        axes[0][col].set_yscale("log")
        axes[1][col].set_title(f"{name}: validation loss", fontsize=9)
        axes[1][col].set_xlabel("epoch")
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)


def table(summary: dict[str, Any]) -> str:
    """The README's table, in Markdown."""
    lines = [
        "| task | method | test error (mean ± std) | paired Δ vs ERM | rel. error reduction | seeds better "
        "| passes vs ERM | time vs ERM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, task in summary.items():
        for label, m in task["methods"].items():
            mark = " (recommended)" if label == task["recommended"] else ""
            lines.append(
                f"| {name} | {label}{mark} | {100 * m['test_error_mean']:.2f} ± {100 * m['test_error_std']:.2f}% | "
                f"{100 * m['paired_difference_mean']:+.2f} ± {100 * m['paired_difference_std']:.2f} | "
                f"{100 * m['relative_error_reduction']:+.1f}% | {m['wins_over_erm']}/{len(m['test_errors'])} | "
                f"{m['passes_vs_erm']:.2f} | {m['time_vs_erm']:.2f}× |"
            )
    for name, task in summary.items():
        tuning = task["validation_error_at_tuning_seed"]
        if tuning:
            choices = ", ".join(f"{label} {100 * error:.2f}%" for label, error in tuning.items())
            lines.append(f"\n{name}: validation error at the tuning seed {TUNING_SEED}: {choices}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and budgets, one seed: a smoke run")
    parser.add_argument("--cached-only", action="store_true", help="write the report from recorded runs, train none")
    parser.add_argument("--tasks", nargs="+", default=list(STUDY_TASKS), choices=list(STUDY_TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results (quick: outputs/)")
    parser.add_argument("--cache", type=Path, default=None, help="default: results/records/accuracy.jsonl")
    cli = parser.parse_args()
    seeds = cli.seeds[:1] if cli.quick else cli.seeds
    outputs = OUTPUTS / "accuracy"
    out = cli.out or (outputs / "quick" if cli.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    cache = cli.cache or (outputs / "quick-runs.jsonl" if cli.quick else RUNS / "accuracy.jsonl")
    started = time.perf_counter()

    scheduler = Scheduler(cli.workers, RunStore(cache), cached_only=cli.cached_only)
    plans = {name: plan(name, seeds, cli.quick) for name in cli.tasks}
    firsts = [spec for first, _ in plans.values() for spec in first]
    scheduler.add([spec.run() for spec in firsts], 0)
    scheduler.run()
    done = {spec: scheduler.done[spec.run()] for spec in firsts if spec.run() in scheduler.done}
    if scheduler.missing:
        raise SystemExit(f"{len(scheduler.missing)} runs have no record; train them without --cached-only")
    seconds = {name: second(done) for name, (_, second) in plans.items()}
    rest = [spec for specs, _ in seconds.values() for spec in specs]
    scheduler.add([spec.run() for spec in rest], 0)
    scheduler.run()
    if scheduler.missing:
        raise SystemExit(f"{len(scheduler.missing)} runs have no record; train them without --cached-only")
    done.update({spec: scheduler.done[spec.run()] for spec in rest})

    summary = {name: summarise(name, seeds, done, seconds[name]) for name in cli.tasks}
    report = {
        "command": command("accuracy"),
        "versions": versions(),
        "machine": machine(cli.workers),
        "wall_seconds": round(time.perf_counter() - started),  # of this invocation: recorded runs cost nothing
        "study_wall_seconds": study_wall_seconds(out / "accuracy.json", [*done.values()], scheduler.trained, started),
        "runs_trained": scheduler.trained,
        "runs_made_by": scheduler.made_by(),
        "training_seconds_all_runs": round(sum(row["train_seconds"] for row in done.values())),
        "seeds": seeds,
        "tuning_seed": TUNING_SEED,
        "tasks": {
            name: {
                "epochs": 1 if cli.quick else TASKS[f"acc_{name}"].epochs,
                "batch_size": FAMILIES[TASKS[f"acc_{name}"].family].batch_size,
                "optimizer": FAMILIES[TASKS[f"acc_{name}"].family].optimizer,
                "grids": STUDY_TASKS[name].grids,
                **summary[name],
            }
            for name in cli.tasks
        },
        "runs_file": project_path(cache),
        "run_keys": [done[spec]["key"] for spec in sorted(done, key=lambda s: (s.task, s.label(), s.seed))],
    }
    (out / "accuracy.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    plot(summary, done, seeds, out)
    text = table(summary) + "\n" + "\n".join(made_by_lines(report["runs_made_by"], cache))
    (out / "accuracy.md").write_text(text + "\n")
    print(text)
    print(
        f"wrote {out}/accuracy.json, accuracy.md, accuracy.png, frontier.png, loss_curves.png "
        f"({len(done)} runs, {report['runs_trained']} of them trained in {report['wall_seconds']} s)"
    )


if __name__ == "__main__":
    main()
