"""AMP at ERM's cost? The momentum direction (Momentum-SAM's perturbation, no ascent pass) against early-stopped ERM.

PROTOCOL (written before any of its runs, 7 December 2026; issue 32 point 4; docs/cheap-amp.md says the same)
- Question: does a momentum-direction setting (amp_direction='momentum') keep >= 80% of full AMP's test-error cut
  against ERM's BEST-VALIDATION CHECKPOINT (early-stopped ERM, the baseline a user has for free), on a task its choice
  never saw, at <= 1.10x ERM's whole-run training time (training CPU seconds, evaluations excluded)?
- Regime first: the frontier tasks (the example's BatchNorm ResNet from scratch, SGD momentum 0.9, lr 0.05, wd 5e-4,
  batch 128, cosine schedule with 5% warm-up; 20% of the training and validation labels replaced by another class,
  test labels clean; trained until ERM memorises them). Full AMP: the reference defaults (ε = 0.5 per tensor, ζ = 1,
  K = 1). The transformer families of the transfer study (a ViT from scratch with AdamW, MiniLM fine-tuning) come
  second, under the same rules, once this phase has its answer; this script does not run them yet.
- Candidates, fixed now: the momentum direction, off during the warm-up (the first 5% of the steps, as the paper
  turns it off during its warm-up), on the GLOBAL ball (absolute radius) with ε in {0.5, 1, 2, 4} (the paper's ρ = 3
  for SGD lies inside), and on the RELATIVE ball (per tensor, radius ε·‖θ_p‖) with ε in {0.02, 0.05, 0.1}. The
  ball's scale (absolute or relative to the weights) is part of the choice.
- TUNING task cnn_mnist_noisy_long (MNIST 2k training, 1k validation, 2k test; 60 epochs), seeds 0, 1, 2: ERM, full
  AMP and every candidate, run seed-major (a sweep cut short has whole seeds). Choice on VALIDATION errors of the
  best-validation checkpoints (noisy labels, as a user has them; test errors never looked at): among the candidates
  at <= 1.10x ERM's CPU time that keep >= 80% of full AMP's validation cut, the lowest validation error
  (benchmarks.stats.choose_cheap). None qualifying: nothing is chosen (the closest is named), and nothing new runs.
- HELD-OUT task cnn_fmnist_noisy_long (Fashion-MNIST 5k training, 2k validation, the 10k test set; 40 epochs), seeds
  0-4, which the choice never looks at: ERM, full AMP, cnn_long_noisy@1 (the ascent on 1/8 of each micro-batch) and
  the chosen setting unchanged. Reported at both baselines (ERM's best-validation checkpoint and its final weights):
  test error, paired difference vs ERM (mean ± std, seeds won), share of full AMP's cut, training-time ratio vs ERM.
- Ship rule (issue 32 point 5): the chosen setting "meets the goal" when it keeps >= 80% of full AMP's best-validation
  cut on the held-out task at <= 1.10x ERM's training time. Then it is proposed as cnn_long_noisy@2 (the report says
  so; the preset, the demo and the docs change by hand, after review). Else docs/cheap-amp.md says so with the
  numbers, and nothing ships beyond the msam preset.

PROTOCOL, TRANSFORMER FAMILIES (written before any of their runs, 7 December 2026, after the CNN phase's answer;
issue 32 point 4; docs/cheap-amp.md says the same)
- Question: does the momentum direction help the transfer study's transformer families against ERM's BEST-VALIDATION
  CHECKPOINT on a held-out task, at <= 1.10x ERM's training time, and how much of the full ascent's cut does it keep?
- Families, tasks and training exactly the transfer study's (benchmarks/tasks.py; AdamW, whose first moment exp_avg
  gives the direction; cosine schedule, 5% warm-up): ViT from scratch, TUNING vit_fmnist_noisy, HELD-OUT
  vit_mnist_noisy; MiniLM-L6 fine-tuning, TUNING text_rt_noisy, HELD-OUT text_speeches_noisy (20% label noise on
  every one of them: the over-fitting regime a regulariser is for). The full ascent each family is measured against is
  the transfer study's best candidate for it, unchanged: ViT asam ε=0.5 (elementwise, ζ = 100), MiniLM sam_global
  ε=0.05 (global, ζ = 100).
- Candidates, fixed now, the same for both families: the momentum direction, off during the warm-up (the first 5% of
  the steps), on the GLOBAL ball with ε in {0.1, 0.3, 1, 3} and on the RELATIVE ball with ε in {0.01, 0.05}.
- Tuning: seeds 0, 1, 2 on the tuning task, ERM and every candidate, seed-major (the choice does not use the full
  ascent, so it runs on the held-out task only). Choice on the
  VALIDATION errors of the best-validation checkpoints (test errors never looked at), the transfer study's rule
  (benchmarks.stats.choose_candidate) among the candidates at <= 1.10x ERM's CPU time: the lowest mean is the
  family's BEST; it is RECOMMENDED only if it beats ERM's validation error on every tuning seed. (The CNN phase's
  share-of-cut rule needs a full ascent that cuts the validation error, which the transfer study did not find for
  these families.) The best runs on the held-out task either way, so the report shows what it does.
- Held-out: seeds 0-4, ERM, the full ascent and the best candidate unchanged; test error at both baselines (the
  best-validation checkpoint and the final weights), the paired difference vs ERM with the library's verdict (Holm
  over the task's comparisons), the share of the full ascent's cut where it has one, the training-time ratio.
- Ship rule: nothing from this phase becomes a preset (cnn_long_noisy@2 is the CNN phase's question); a candidate
  that is RECOMMENDED and 'better' than early-stopped ERM on its held-out task is named in README's decision table as
  evidence for that family, else README says the momentum direction has no evidence there.

    python -m benchmarks.momentum_study                    # CNN: the tuning sweep, then the held-out check (47 runs)
    python -m benchmarks.momentum_study --phase tune       # CNN: the tuning sweep only (27 runs)
    python -m benchmarks.momentum_study --phase check      # CNN: the held-out check, on the tuning runs as recorded
    python -m benchmarks.momentum_study --family vit text  # the transformer families (both phases, 72 runs)
    python -m benchmarks.momentum_study --cached-only      # the report from the recorded runs, training none

Records in benchmarks/results/records/momentum_study.jsonl. Writes benchmarks/results/momentum_study.{json,md} (CNN)
and momentum_study_{vit,text}.{json,md}; when runs are missing, a partial report in outputs/momentum_study/partial/.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .methods import ASAM, DEFAULTS, EIGHTH, ERM, SAM_GLOBAL, Method, amp
from .reports import command, made_by_lines
from .runner import OUTPUTS, RESULTS, RUNS, RunStore, Scheduler, Spec
from .stats import choose_candidate, choose_cheap, cut_shares

TUNING_SEEDS, CHECK_SEEDS = (0, 1, 2), (0, 1, 2, 3, 4)
TIME_GOAL = 1.10
WARMUP = 0.05
"""The study runs' warm-up (benchmarks.runner.study_args: 5% of the steps), during which the perturbation is off."""


def momentum(norm: str, epsilon: float) -> Method:
    return amp(f"momentum {norm} ε={epsilon:g}", start=WARMUP, direction="momentum", norm=norm, epsilon=epsilon)


@dataclass(frozen=True)
class Phase:
    """One family's protocol: where it tunes and checks, the full ascent it is measured against, its candidates and
    its choice rule ('share': >= 80% of the full ascent's validation cut; 'beats_erm': the transfer study's rule)."""

    family: str
    tune: str
    check: str
    full: Method
    candidates: tuple[Method, ...]
    rule: str
    also_checked: tuple[Method, ...] = ()
    full_tunes: bool = True
    """Whether the full ascent runs on the tuning task (the share rule needs it)."""

    @property
    def protocol(self) -> str:
        marker = "PROTOCOL, TRANSFORMER FAMILIES" if self.rule == "beats_erm" else "PROTOCOL ("
        return (marker + __doc__.split(marker, 1)[1]).split("\n\n", 1)[0].strip()

    @property
    def stem(self) -> str:
        return "momentum_study" if self.family == "cnn" else f"momentum_study_{self.family}"

    def tuning_methods(self) -> tuple[Method, ...]:
        return (ERM, self.full, *self.candidates) if self.full_tunes else (ERM, *self.candidates)


TRANSFORMER_CANDIDATES = (
    *(momentum("global", e) for e in (0.1, 0.3, 1.0, 3.0)),
    *(momentum("relative", e) for e in (0.01, 0.05)),
)
PHASES = {
    "cnn": Phase(
        "cnn", "cnn_mnist_noisy_long", "cnn_fmnist_noisy_long", DEFAULTS,
        (*(momentum("global", e) for e in (0.5, 1.0, 2.0, 4.0)), *(momentum("relative", e) for e in (0.02, 0.05, 0.1))),
        "share", also_checked=(EIGHTH,),
    ),
    "vit": Phase(
        "vit", "vit_fmnist_noisy", "vit_mnist_noisy", ASAM, TRANSFORMER_CANDIDATES, "beats_erm", full_tunes=False,
    ),
    "text": Phase(
        "text", "text_rt_noisy", "text_speeches_noisy", SAM_GLOBAL, TRANSFORMER_CANDIDATES, "beats_erm",
        full_tunes=False,
    ),
}  # fmt: skip
CANDIDATES = PHASES["cnn"].candidates


def summary(done: dict[Spec, dict], task: str, full: Method, methods: tuple[Method, ...], seeds) -> dict[str, Any]:
    """Every method against ERM and the full ascent on `task`; the headline is the best-validation checkpoints."""
    return {"task": task, **cut_shares(done, task, methods, full, seeds, headline_best_val=True, time_goal=TIME_GOAL)}


def choose(phase: Phase, done: dict[Spec, dict]) -> dict[str, Any] | None:
    """The phase's rule on the tuning task's validation errors; None until every tuning run has a record."""
    if any(Spec(phase.tune, m, s) not in done for m in phase.tuning_methods() for s in TUNING_SEEDS):
        return None
    rows = summary(done, phase.tune, phase.full, phase.candidates, TUNING_SEEDS).get("methods", {})
    if phase.rule == "share":
        return choose_cheap(rows, [m.name for m in phase.candidates], TIME_GOAL, best_val=True)
    fast = [m.name for m in phase.candidates if rows[m.name]["cpu_time_vs_erm"] <= TIME_GOAL]
    if not fast:
        return {"best": None, "recommended": "ERM", "fast_enough": []}
    errors = {
        name: {
            s.seed: done[s]["val_error"]
            for s in done
            if s.task == phase.tune and s.method.name == name and s.seed in TUNING_SEEDS
        }
        for name in ("ERM", *fast)
    }
    return {**choose_candidate(errors), "fast_enough": fast, "val_errors": errors}


def chosen_method(phase: Phase, choice: dict[str, Any] | None) -> Method | None:
    name = (choice or {}).get("chosen" if phase.rule == "share" else "best")
    return next((m for m in phase.candidates if m.name == name), None)


def markdown(report: dict[str, Any]) -> str:
    """The two tables (tuning, held-out), the choice and whether it meets the goal."""
    points = lambda x: "" if x is None else f"{100 * x:.2f}"  # noqa: E731
    share = lambda x: "" if x is None else f"{100 * x:.0f}%"  # noqa: E731

    def paired(p: dict[str, Any] | None) -> str:
        if not p:
            return ""
        low, high = p.get("ci95") or (None, None)
        interval = f", [{100 * low:+.2f}, {100 * high:+.2f}]" if low is not None and high is not None else ""
        won = f"({p['wins']}/{len(p['seeds'])})"
        return f"{100 * p['mean']:+.2f} ± {100 * p['std']:.2f} {won}{interval}, {p['verdict']}"

    lines = []
    for key in ("tuning", "check"):
        part = report.get(key) or {}
        if not part.get("methods"):
            continue
        lines += [
            f"### {key}: {part['task']}",
            "",
            "| setting | val error, best-val | share of val cut | test error, best-val | Δ vs ERM (won) | share of cut "
            "| test error, final | Δ vs ERM, final (won) | share, final | time vs ERM | meets goal |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in part["methods"].items():
            cells = [
                name, points(m["val_error_mean"]), share(m.get("share_of_full_val_cut_bv")),
                f"{points(m['test_error_mean'])} ± {points(m['test_error_std'])}", paired(m.get("paired")),
                share(m.get("share_of_full_cut_bv")),
                f"{points(m['final_test_error_mean'])} ± {points(m['final_test_error_std'])}",
                paired(m.get("paired_final")), share(m.get("share_of_full_cut")),
                f"{m.get('cpu_time_vs_erm', 1.0):.2f}", "yes" if m.get("meets_goal") else "",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        f"Choice on the tuning task's validation errors: {json.dumps(report.get('choice'), ensure_ascii=False)}"
    )
    if report.get("family", "cnn") == "cnn":
        lines.append(f"Proposed as cnn_long_noisy@2: {json.dumps(report.get('proposed'), ensure_ascii=False)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", choices=sorted(PHASES), default=["cnn"], help="whose protocol runs")
    parser.add_argument(
        "--phase", choices=("tune", "check", "all"), default="all",
        help="tune: the tuning sweep only; check: the held-out check, reading the tuning runs as recorded (by any "
        "code: a sweep may finish under one code while the check starts under the next), training none of them",
    )  # fmt: skip
    parser.add_argument("--cached-only", action="store_true", help="write the report from recorded runs, train none")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=RUNS / "momentum_study.jsonl", help="run records")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results")
    cli = parser.parse_args()
    started = time.perf_counter()
    store = RunStore(cli.cache)
    scheduler = Scheduler(cli.workers, store, cached_only=cli.cached_only)
    phases = [PHASES[name] for name in dict.fromkeys(cli.family)]
    tuning_missing: dict[str, list[Spec]] = {p.family: [] for p in phases}
    for phase in phases:
        tuning = [[Spec(phase.tune, m, seed) for m in phase.tuning_methods()] for seed in TUNING_SEEDS]
        if cli.phase == "check":
            recorded = Scheduler(1, store, cached_only=True)
            recorded.add([spec for specs in tuning for spec in specs], 0)
            scheduler.done.update(recorded.done)
            tuning_missing[phase.family] = recorded.missing
        else:
            for rank, specs in enumerate(tuning):  # seed-major: a sweep cut short has whole seeds
                scheduler.add(specs, 10 - rank)
        if cli.phase != "tune":  # the check's runs that do not wait on the choice
            baselines = (ERM, phase.full, *phase.also_checked)
            scheduler.add([Spec(phase.check, m, s) for m in baselines for s in CHECK_SEEDS], 1)
    choices: dict[str, Any] = {}

    def on_progress() -> None:
        for phase in phases:
            if phase.family in choices or (choice := choose(phase, scheduler.done)) is None:
                continue
            choices[phase.family] = choice
            print(f"{phase.family} choice: {choice}", flush=True)
            chosen = chosen_method(phase, choice)
            if chosen is not None and cli.phase != "tune":
                scheduler.add([Spec(phase.check, chosen, s) for s in CHECK_SEEDS], 3)

    scheduler.run(on_progress)
    for phase in phases:
        write_report(phase, scheduler, choices.get(phase.family), tuning_missing[phase.family], cli, started)


def write_report(
    phase: Phase, scheduler: Scheduler, choice: dict[str, Any] | None, tuning_missing: list[Spec], cli: Any,
    started: float,
) -> None:  # fmt: skip
    """The phase's report: both tables, the choice, what the check shows, and which runs have no record."""
    chosen = chosen_method(phase, choice)
    checked = tuple(dict.fromkeys(m for m in (chosen, *phase.also_checked) if m is not None))
    check = summary(scheduler.done, phase.check, phase.full, checked, CHECK_SEEDS) if cli.phase != "tune" else None
    report: dict[str, Any] = {
        "family": phase.family,
        "command": command("momentum_study"),
        "protocol": phase.protocol,
        "time_goal": TIME_GOAL,
        "tuning": summary(scheduler.done, phase.tune, phase.full, phase.candidates, TUNING_SEEDS),
        "choice": choice,
        "check": check,
    }
    row = ((check or {}).get("methods") or {}).get(chosen.name) if chosen else None
    if phase.rule == "share":
        proposed = chosen is not None and row is not None and row["meets_goal"]
        report["proposed"] = {"args": chosen.kwargs, "start_fraction": chosen.start} if proposed else None
    else:  # README names it as evidence for the family only when recommended AND better at the best-val checkpoint
        recommended = chosen is not None and (choice or {}).get("recommended") == chosen.name
        report["evidence_for_family"] = bool(row and recommended and row["paired"]["verdict"] == "better")
    shown = (phase.full, *phase.also_checked, *phase.candidates)
    report["methods"] = {m.name: {**m.kwargs, "start_fraction": m.start} for m in shown}
    missing = [*tuning_missing, *(s for s in scheduler.missing if s.task in (phase.tune, phase.check))]
    report["runs_not_run"] = sorted(f"{s.task} seed {s.seed} {s.method.name}" for s in missing)
    report["runs_made_by"] = scheduler.made_by({phase.tune, phase.check})
    report["wall_seconds"] = round(time.perf_counter() - started)
    out = cli.out or (OUTPUTS / "momentum_study" / "partial" if missing else RESULTS)
    if missing:
        print(f"{phase.family}: {len(missing)} runs have no record: a partial report in {out}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{phase.stem}.json").write_text(json.dumps(report, indent=1, default=str, ensure_ascii=False) + "\n")
    text = markdown(report) + "\n" + "\n".join(made_by_lines(report["runs_made_by"], cli.cache))
    (out / f"{phase.stem}.md").write_text(text + "\n")
    print(f"wrote {out / f'{phase.stem}.md'}")


if __name__ == "__main__":
    main()
