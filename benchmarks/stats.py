"""Paired statistics over seeds, per-task summaries of runs, shares of a full method's error cut, and the studies'
choice rules. Every choice here reads validation errors only; none looks at a test set.

The verdicts are the library's (amp_hf.compare.statistics, the rule compare uses): a study's table says "better",
"worse", "no evidence" or "too few seeds", family-wise adjusted over the task's comparisons; the older "within noise
when |mean| <= std" rule, much looser than a 95% interval, is gone.
"""

from __future__ import annotations

import statistics
from typing import Any

from amp_hf.compare.statistics import PairedDifference, judge_family, paired_difference

from .methods import Method, passes_per_step
from .tasks import TASKS

TIME_GOAL, SHARE_GOAL = 1.3, 0.8
"""A cheap setting is worth recommending when it keeps >= 80% of full AMP's cut at <= 1.3x ERM's time."""


def _paired_dict(paired: PairedDifference, erm: dict[int, float]) -> dict[str, Any]:
    """A judged paired difference as the studies' reports hold it: the library's own fields (ci95, p_value,
    p_adjusted, verdict, reason, ...) plus the relative change of the mean error; `std` is 0 for one seed so that the
    reports' "mean ± std" cells always have a number."""
    erm_mean = statistics.mean(erm[s] for s in paired.seeds) if paired.seeds else 0.0
    out = paired.to_dict()
    out["std"] = paired.std if paired.std is not None else 0.0
    out["relative_change"] = paired.mean / erm_mean if erm_mean and paired.mean is not None else 0.0
    return out


def paired_stats(erm: dict[int, float], amp: dict[int, float]) -> dict[str, Any]:
    """AMP − ERM (errors: lower is better) over the seeds both have, judged alone by the library's rule
    (amp_hf.compare.statistics: the paired t interval, 'too few seeds' below 3, the sign-flip test at zero spread).
    A study that reports several comparisons judges them together with `paired_family`."""
    return _paired_dict(paired_difference(erm, amp, greater_is_better=False), erm)


def paired_family(pairs: dict[Any, tuple[dict[int, float], dict[int, float]]]) -> dict[Any, dict[str, Any]]:
    """{key: (erm errors, amp errors)} judged as one family (Holm over every comparison given, as compare does over
    candidates × baselines): a study's table of verdicts keeps its family-wise error at 5%."""
    keys = list(pairs)
    judged = judge_family([paired_difference(*pairs[k], greater_is_better=False) for k in keys])
    return {k: _paired_dict(p, pairs[k][0]) for k, p in zip(keys, judged)}


def share_of_cut(erm: float, full: float, setting: float) -> float | None:
    """The share of full AMP's error cut (erm − full) that a setting keeps: (erm − setting) / (erm − full); None
    when full AMP cuts nothing."""
    cut = erm - full
    return (erm - setting) / cut if cut > 0 else None


def summarise_task(task: str, done: dict[Any, dict], methods: list[str], seeds) -> dict[str, Any]:
    """ERM vs each method on one task: test errors (best-val and final weights), paired statistics, regime."""
    rows = {m: {s.seed: r for s, r in done.items() if s.task == task and r["method"] == m and s.seed in seeds}
            for m in ["ERM", *methods]}  # fmt: skip
    erm = rows["ERM"]
    out: dict[str, Any] = {"role": TASKS[task].role, "title": TASKS[task].title, "methods": {}}
    pairs = {}
    for m, by_seed in rows.items():
        if m != "ERM" and erm and by_seed:
            for key, field in (("paired", "test_error"), ("paired_final", "final_test_error")):
                pairs[(m, key)] = ({s: r[field] for s, r in erm.items()}, {s: r[field] for s, r in by_seed.items()})
    judged = paired_family(pairs)  # the task's family: every method at both baselines
    for m, by_seed in rows.items():
        if not by_seed:
            continue
        errors = [by_seed[s]["test_error"] for s in sorted(by_seed)]
        finals = [by_seed[s]["final_test_error"] for s in sorted(by_seed)]
        entry = {
            "test_errors": errors,
            "test_error_mean": statistics.mean(errors),
            "test_error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
            "final_test_error_mean": statistics.mean(finals),
            "final_test_error_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "val_error_mean": statistics.mean(r["val_error"] for r in by_seed.values()),
            "final_train_loss_mean": statistics.mean(r["final_train_loss"] for r in by_seed.values()),
            "final_train_error_mean": statistics.mean(r["final_train_error"] for r in by_seed.values()),
            "best_epochs": [by_seed[s]["best_epoch"] for s in sorted(by_seed)],
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in by_seed.values()),
            "train_cpu_seconds_mean": statistics.mean(r["train_cpu_seconds"] for r in by_seed.values()),
            "amp_skipped": sum(r["amp_skipped"] for r in by_seed.values()),
        }
        if m != "ERM" and erm:
            entry["paired"], entry["paired_final"] = judged[(m, "paired")], judged[(m, "paired_final")]
            paired_seeds = [s for s in by_seed if s in erm]
            entry["time_vs_erm"] = statistics.mean(by_seed[s]["train_seconds"] for s in paired_seeds) / statistics.mean(
                erm[s]["train_seconds"] for s in paired_seeds
            )
            entry["cpu_time_vs_erm"] = statistics.mean(
                by_seed[s]["train_cpu_seconds"] for s in paired_seeds
            ) / statistics.mean(erm[s]["train_cpu_seconds"] for s in paired_seeds)
        out["methods"][m] = entry
    first = next(iter(done[s] for s in done if s.task == task), None)
    out["data"] = first["data"] if first else {}
    return out


def cut_shares(
    done: dict[Any, dict],
    task: str,
    methods: tuple[Method, ...],
    full: Method,
    seeds,
    headline_best_val: bool,
    time_goal: float = TIME_GOAL,
) -> dict[str, Any]:
    """Every method against ERM on `task` (the cheap-AMP frontier): final and best-validation test errors, the shares
    of full AMP's cuts each keeps (test, best-val test, validation of the final weights and of the best-validation
    checkpoint), times and the passes model, and whether it meets the goal (>= 80% of the headline's cut at
    <= `time_goal` x ERM's CPU time; the headline is the best-validation checkpoints when `headline_best_val`, else
    the final weights)."""
    summary = summarise_task(task, done, [m.name for m in (full, *methods)], seeds)
    rows = summary["methods"]
    erm, full_row = rows.get("ERM"), rows.get(full.name)
    if not erm or not full_row:
        return summary

    def runs_of(name: str) -> dict[int, dict]:
        return {s.seed: r for s, r in done.items() if s.task == task and r["method"] == name and s.seed in seeds}

    for name, m in rows.items():
        m["final_val_error_mean"] = statistics.mean(r["final_val_error"] for r in runs_of(name).values())
    for method in (full, *methods):
        m = rows.get(method.name)
        if m is None:
            continue
        by_seed = runs_of(method.name)
        m["wall_time_vs_erm"] = m.pop("time_vs_erm")
        m["passes_vs_erm"] = passes_per_step(method.kwargs, method.start)
        m["final_train_loss_by_seed"] = [round(by_seed[s]["final_train_loss"], 4) for s in sorted(by_seed)]
        for key, value in (("final_test_error_mean", "share_of_full_cut"), ("test_error_mean", "share_of_full_cut_bv")):
            m[value] = share_of_cut(erm[key], full_row[key], m[key])
        m["share_of_full_val_cut"] = share_of_cut(
            erm["final_val_error_mean"], full_row["final_val_error_mean"], m["final_val_error_mean"]
        )
        m["share_of_full_val_cut_bv"] = share_of_cut(
            erm["val_error_mean"], full_row["val_error_mean"], m["val_error_mean"]
        )
        share = m["share_of_full_cut_bv" if headline_best_val else "share_of_full_cut"]
        m["meets_goal"] = bool(share is not None and share >= SHARE_GOAL and m["cpu_time_vs_erm"] <= time_goal)
    for key, value in (("final_test_error_mean", "final"), ("test_error_mean", "best_val")):
        summary[f"full_amp_relative_cut_{value}"] = (erm[key] - full_row[key]) / erm[key]
    return summary


# --------------------------------------------------------------------------------------------- choice rules
def choose_candidate(val_errors: dict[str, dict[int, float]], erm: str = "ERM") -> dict[str, Any]:
    """A family's choice from validation errors {candidate: {tuning seed: error}} (the transfer study).

    best: the AMP candidate with the lowest mean (ties: the first listed). recommended: best if it beats ERM on
    every tuning seed, else ERM."""
    means = {name: statistics.mean(errors.values()) for name, errors in val_errors.items()}
    amp = [name for name in val_errors if name != erm]
    best = min(amp, key=lambda name: means[name])
    beats = all(val_errors[best][s] < val_errors[erm][s] for s in val_errors[erm])
    return {
        "best": best,
        "recommended": best if beats else erm,
        "beats_erm_on_every_tuning_seed": beats,
        "mean_validation_error": means,
    }


def choose_cheapest_keeping_cut(
    erm_val: dict[int, float], full_val: dict[int, float], variants: dict[str, dict[str, Any]]
) -> str | None:
    """The transfer study's CNN-control rule: full AMP must beat ERM's validation error on every seed; then the
    variant (full AMP included) with the least time vs ERM among those keeping >= 80% of its validation cut.
    `variants`: {name: {"share_of_full_val_cut", "time_vs_erm"}}."""
    if not full_val or not all(full_val[s] < erm_val[s] for s in full_val if s in erm_val):
        return None
    keeps = [name for name, m in variants.items() if (m["share_of_full_val_cut"] or 0) >= SHARE_GOAL]
    return min(keeps, key=lambda name: variants[name]["time_vs_erm"])


def choose_cheap(
    rows: dict[str, dict[str, Any]], cheap: list[str], time_goal: float = TIME_GOAL, best_val: bool = False
) -> dict[str, Any]:
    """The frontier studies' rule on the selection task's validation errors: among the `cheap` settings whose CPU
    time is <= `time_goal` x ERM's, those keeping >= 80% of full AMP's validation cut; of those the lowest validation
    error. The validation errors are the final weights' (the frontier study), or the best-validation checkpoints'
    when `best_val` (the cost-frontier study, whose baseline is early-stopped ERM). None qualifying: no choice, and
    the closest is named."""
    share, error = (
        ("share_of_full_val_cut_bv", "val_error_mean")
        if best_val
        else ("share_of_full_val_cut", "final_val_error_mean")
    )
    present = {name: rows[name] for name in cheap if name in rows}
    fast = {n: r for n, r in present.items() if r["cpu_time_vs_erm"] <= time_goal}
    keeps = {n: r for n, r in fast.items() if (r[share] or 0) >= SHARE_GOAL}
    if keeps:
        chosen = min(keeps, key=lambda n: keeps[n][error])
        return {"chosen": chosen, "qualifying": sorted(keeps), "fast_enough": sorted(fast)}
    closest = max(fast, key=lambda n: fast[n][share] or -1e9) if fast else None
    return {"chosen": None, "closest": closest, "qualifying": [], "fast_enough": sorted(fast)}
