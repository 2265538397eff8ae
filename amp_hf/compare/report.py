"""The comparison's report: per candidate the paired difference to ERM at each baseline (the headline, i.e. the
best checkpoint's value for early-stopping runs, and the final weights'), the time ratio, the verdict; written as
compare.json (`ComparisonReport.to_dict()`), compare.md (tables) and compare.png (the per-seed differences)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .candidates import ERM_NAME, Candidate, CompareError
from .runs import TEST, RunRecord, choose_source
from .statistics import paired_difference

JSON_FILE, MARKDOWN_FILE, PLOT_FILE = "compare.json", "compare.md", "compare.png"


@dataclass
class Baseline:
    """One candidate's values at one baseline, and (for all but ERM) their paired statistics against ERM's."""

    values: dict[int, float]
    statistics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        values = list(self.values.values())
        out: dict[str, Any] = {
            "values": {str(seed): value for seed, value in self.values.items()},
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
        }
        s = self.statistics or {}
        out.update(
            mean_difference=s.get("mean"),
            std_difference=s.get("std"),
            ci95=s.get("ci95"),
            wins=s.get("wins"),
            n=s.get("n"),
            verdict=s.get("verdict"),
            half_width=s.get("half_width"),
            verdict_reason=s.get("reason"),
            differences={str(k): v for k, v in zip(s.get("seeds", []), s.get("differences", []))} if s else None,
        )
        return out


@dataclass
class CandidateResult:
    """One candidate's entry of the report."""

    name: str
    settings: dict[str, Any]
    headline: Baseline
    final: Baseline | None
    runtimes: dict[int, float | None]
    time_ratio: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.settings,
            **self.headline.to_dict(),
            "time_ratio": self.time_ratio,
            "train_runtime": {str(k): v for k, v in self.runtimes.items()},
            "final": self.final.to_dict() if self.final is not None else None,
        }


@dataclass
class ComparisonReport:
    """What compare found; `to_dict()` is exactly compare.json."""

    metric: str
    greater_is_better: bool
    seeds: list[int]
    """The seeds every candidate has (the ones the statistics use)."""
    requested_seeds: list[int]
    source: str
    early_stopping: bool
    candidates: list[CandidateResult]
    warnings: list[str] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)

    def candidate(self, name: str) -> CandidateResult:
        return next(c for c in self.candidates if c.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "seeds": self.seeds,
            "requested_seeds": self.requested_seeds,
            "source": self.source,
            "early_stopping": self.early_stopping,
            "headline": self.headline_label(),
            "warnings": self.warnings,
            "missing": self.missing,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def headline_label(self) -> str:
        split = "test" if self.source == TEST else "validation"
        where = "the best-validation checkpoint" if self.early_stopping else "the final weights"
        return f"{split} {self.metric} of {where}"

    def write(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / JSON_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        note = write_plot(self, output_dir / PLOT_FILE)
        (output_dir / MARKDOWN_FILE).write_text(markdown(self, note))


# ------------------------------------------------------------------------------------------------- building it
def _expected_config(candidate: Candidate) -> dict[str, Any]:
    """The amp_* values a candidate's runs must show (AMPConfig names), resolved as its runs resolve them."""
    return candidate.expected_settings()


def _same_setting(used: Any, asked: Any) -> bool:
    """Whether a run's recorded amp_* value is the one asked for: numbers by value (a JSON candidate's 100 is the
    float field's 100.0), pattern lists by their items."""
    if isinstance(used, (list, tuple)) or isinstance(asked, (list, tuple)):
        return list(used or ()) == list(asked or ())
    if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (used, asked)):
        return float(used) == float(asked)
    return used == asked


def _settings_warning(candidate: Candidate, records: Sequence[RunRecord]) -> str | None:
    """A candidate whose runs did not use its settings (a flag that silently did nothing) is named."""
    expected = _expected_config(candidate)
    for record in records:
        used = record.amp_config
        if not used:
            continue
        wrong = {k: (used[k], v) for k, v in expected.items() if k in used and not _same_setting(used[k], v)}
        if wrong:
            parts = ", ".join(f"amp_{k}={got!r} (asked {want!r})" for k, (got, want) in wrong.items())
            return (
                f"candidate {candidate.name}: run seed {record.seed} trained with {parts}: its settings did not apply"
            )
    return None


def _default_metric(records: Sequence[RunRecord], warnings: list[str]) -> str:
    """The runs' metric_for_best_model as a metric name: 'validation_accuracy' of a dict eval_dataset is 'accuracy'
    when the runs also logged a test split's accuracy; no metric_for_best_model: 'loss'."""
    chosen = sorted({r.metric_for_best_model for r in records if r.metric_for_best_model})
    if len(chosen) > 1:
        warnings.append(f"the runs chose different metric_for_best_model ({', '.join(chosen)}); using {chosen[0]}")
    if not chosen:
        return "loss"
    name = chosen[0]
    parts = name.split("_")
    for i in range(len(parts)):
        suffix = "_".join(parts[i:])
        if any(r.has_test(suffix) for r in records):
            return suffix
    return name


def build_report(
    candidates: Sequence[Candidate],
    seeds: Sequence[int],
    records: Mapping[tuple[str, int], RunRecord],
    missing: list[dict[str, Any]],
    metric: str | None = None,
    greater_is_better: bool | None = None,
) -> ComparisonReport:
    """The report from the finished runs' records. Raises CompareError when there is nothing to compare or when no
    run recorded `metric` (listing the metrics the runs have)."""
    warnings: list[str] = []
    missing = list(missing)
    all_records = list(records.values())
    if not all_records:
        raise CompareError(
            "no run finished, so there is nothing to compare: "
            + "; ".join(f"{m['candidate']} seed {m['seed']}: {m['reason']}" for m in missing)
        )
    metric = metric.removeprefix("eval_") if metric else _default_metric(all_records, warnings)
    usable = {key: r for key, r in records.items() if r.has_metric(metric)}
    if not usable:
        recorded = sorted({k for r in all_records for k in r.recorded_metrics()})
        raise CompareError(
            f"--metric {metric}: no run recorded it (looked for test_{metric}, eval_test_{metric}, eval_{metric} and "
            f"eval_<name>_{metric}). The runs recorded: {', '.join(recorded)}. Give --metric as the name after the "
            "eval_/test_ prefix, e.g. --metric loss"
        )
    for name, seed in sorted(set(records) - set(usable)):
        missing.append({"candidate": name, "seed": seed, "reason": f"the run recorded no {metric}"})
    if greater_is_better is None:
        flags = {r.training_args.get("greater_is_better") for r in usable.values() if r.training_args}
        flags.discard(None)
        if len(flags) == 1 and all(
            r.metric_for_best_model and r.metric_for_best_model.endswith(metric) for r in usable.values()
        ):
            greater_is_better = bool(flags.pop())
        else:
            greater_is_better = not metric.endswith("loss")
            warnings.append(
                f"the direction of {metric} was not recorded with it (metric_for_best_model / greater_is_better): "
                f"assumed {'higher' if greater_is_better else 'lower'} is better; pass --greater_is_better to set it"
            )
    present = [c for c in candidates if any((c.name, s) in usable for s in seeds)]
    if not any(c.name == ERM_NAME for c in present):
        raise CompareError(
            "ERM has no finished run with the metric, so there is nothing to compare against: "
            + "; ".join(f"{m['candidate']} seed {m['seed']}: {m['reason']}" for m in missing)
        )
    for c in candidates:
        if c not in present:
            warnings.append(f"candidate {c.name} has no finished run: it is left out of the comparison")
    complete = [s for s in seeds if all((c.name, s) in usable for c in present)]
    if len(complete) < len(seeds):
        dropped = [s for s in seeds if s not in complete]
        warnings.append(
            f"seed(s) {', '.join(map(str, dropped))} left out: not every candidate has a finished run there"
        )
    used = [usable[(c.name, s)] for c in present for s in complete]
    source = choose_source(used, metric)
    if source != TEST:
        partial = [r for r in used if r.has_test(metric)]
        if partial:
            warnings.append(
                f"only {len(partial)} of {len(used)} runs have a test split's {metric}: comparing validation values"
            )
        warnings.append(
            f"no test split: the numbers are validation {metric}, the split the best checkpoint was chosen on, so the "
            "best-checkpoint values are optimistic for every candidate alike; evaluate a test split for an unbiased "
            "number (trainer.evaluate(test, metric_key_prefix='test') and save_metrics('test', ...), or an "
            "eval_dataset dict with a 'test' entry)"
        )
    not_early = [r for r in used if not r.early_stopping]
    early_stopping = bool(used) and not not_early
    if not_early:
        warnings.append(
            f"{len(not_early)} of {len(used)} runs did not early-stop (no load_best_model_at_end, or no best "
            "checkpoint kept): their numbers are the final weights'. Early stopping on a validation split is the "
            "baseline a user has for free: add --load_best_model_at_end --metric_for_best_model <metric> with "
            "matching eval/save strategies to compare against it"
        )
    results = []
    erm_headline: dict[int, float] = {}
    erm_final: dict[int, float] | None = None
    erm_runtime: dict[int, float | None] = {}
    for candidate in candidates:
        own = [usable[(candidate.name, s)] for s in complete if (candidate.name, s) in usable]
        warning = _settings_warning(candidate, own)
        if warning:
            warnings.append(warning)
        pairs = {r.seed: r.values(metric, source) for r in own}
        headline = {s: v for s, (v, _) in pairs.items() if v is not None}
        finals = {s: f for s, (_, f) in pairs.items() if f is not None}
        final = finals if pairs and len(finals) == len(pairs) and early_stopping else None
        runtimes = {r.seed: r.runtime for r in own}
        if candidate.name == ERM_NAME:
            erm_headline, erm_final, erm_runtime = headline, final, runtimes
            results.append(
                CandidateResult(
                    candidate.name,
                    dict(candidate.arguments),
                    Baseline(headline),
                    Baseline(final) if final is not None else None,
                    runtimes,
                    None,
                )
            )
            continue
        stats = paired_difference(erm_headline, headline, greater_is_better).to_dict()
        final_baseline = None
        if final is not None and erm_final is not None:
            final_baseline = Baseline(final, paired_difference(erm_final, final, greater_is_better).to_dict())
        ratios = [runtimes[s] / erm_runtime[s] for s in runtimes if runtimes[s] and erm_runtime.get(s)]
        results.append(
            CandidateResult(
                candidate.name,
                dict(candidate.arguments),
                Baseline(headline, stats),
                final_baseline,
                runtimes,
                statistics.fmean(ratios) if ratios else None,
            )
        )
    return ComparisonReport(
        metric, greater_is_better, complete, list(seeds), source, early_stopping, results, warnings, missing
    )


# ------------------------------------------------------------------------------------------------- writing it
def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _table(report: ComparisonReport, final: bool) -> list[str]:
    lines = [
        "| candidate | settings | mean ± std | difference to ERM (mean ± std) | 95% CI | wins | verdict | detectable "
        "| time ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.candidates:
        block = c.final if final else c.headline
        if block is None:
            continue
        b = block.to_dict()
        settings = ", ".join(f"{k.removeprefix('amp_')}={v}" for k, v in c.settings.items())
        spread = f"{_number(b['mean'])} ± {_number(b['std'])}"
        if c.name == ERM_NAME:
            lines.append(f"| {c.name} | {settings} | {spread} | — | — | — | baseline | — | 1 |")
            continue
        ci = "—" if b["ci95"] is None else f"[{_number(b['ci95'][0])}, {_number(b['ci95'][1])}]"
        lines.append(
            f"| {c.name} | {settings} | {spread} | {_number(b['mean_difference'])} ± {_number(b['std_difference'])} "
            f"| {ci} | {b['wins']}/{b['n']} | **{b['verdict']}** | {_number(b['half_width'])} "
            f"| {_number(c.time_ratio)} |"
        )
    return lines


def _per_seed(report: ComparisonReport) -> list[str]:
    """Every run's values (headline / final) and train_runtime, so each number of the tables can be traced."""
    lines = ["| candidate | seed | headline | final | train_runtime (s) |", "|---|---|---|---|---|"]
    for c in report.candidates:
        for seed in report.seeds:
            final = c.final.values.get(seed) if c.final is not None else None
            lines.append(
                f"| {c.name} | {seed} | {_number(c.headline.values.get(seed))} | {_number(final)} "
                f"| {_number(c.runtimes.get(seed))} |"
            )
    return lines


def markdown(report: ComparisonReport, plot_note: str) -> str:
    direction = "higher" if report.greater_is_better else "lower"
    split = "test" if report.source == TEST else "validation"
    lines = [
        "# Does AMP help this task? (amp_hf.compare)",
        "",
        f"Metric: **{report.metric}** ({direction} is better), {split} split; paired seeds: "
        f"{', '.join(map(str, report.seeds)) or 'none'} (n = {len(report.seeds)}). Differences are candidate − ERM in "
        f"the metric's units; a verdict is `better`/`worse` only when the 95% confidence interval excludes 0; "
        "`detectable` is the interval's half-width, the smallest mean difference these seeds could have detected. "
        "Time ratio: the candidate's train_runtime / ERM's, averaged over the seeds. (AMP here is Adversarial Model "
        "Perturbation, not automatic mixed precision.)",
        "",
        f"## {report.headline_label().capitalize()}",
        "",
        *_table(report, final=False),
    ]
    if any(c.final is not None for c in report.candidates):
        lines += ["", f"## {split.capitalize()} {report.metric} of the final weights", "", *_table(report, final=True)]
    reasons = [f"- {c.name}: {c.headline.statistics['reason']}" for c in report.candidates if c.headline.statistics]
    lines += ["", "Verdicts (headline):", "", *reasons, "", "## Per seed", "", *_per_seed(report)]
    if report.warnings:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in report.warnings)]
    if report.missing:
        lines += ["", "## Missing runs", ""]
        lines += [
            f"- {m['candidate']} seed {m['seed']}: {m['reason']}" + (f" (log: `{m['log']}`)" if m.get("log") else "")
            for m in report.missing
        ]
    lines += ["", f"Plot: {plot_note}", ""]
    return "\n".join(lines)


def write_plot(report: ComparisonReport, path: Path) -> str:
    """compare.png: per candidate its per-seed differences to ERM and the 95% CI, one panel per baseline. Without
    matplotlib (the `demo` / `bench` extras) the plot is skipped and the note says so."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped (matplotlib is not installed: pip install 'amp-hf[demo]')"
    others = [c for c in report.candidates if c.name != ERM_NAME]
    panels = [("headline", report.headline_label())]
    if any(c.final is not None for c in others):
        panels.append(("final", f"{'test' if report.source == TEST else 'validation'} {report.metric}, final weights"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (kind, title) in zip(axes[0], panels):
        for i, c in enumerate(others):
            block = c.headline if kind == "headline" else c.final
            if block is None or not block.statistics:
                continue
            s = block.statistics
            axis.scatter([i] * len(s["differences"]), s["differences"], color="tab:blue", alpha=0.7, zorder=3)
            if s["ci95"] is not None:
                low, high = s["ci95"]
                axis.errorbar(
                    [i + 0.15],
                    [s["mean"]],
                    yerr=[[s["mean"] - low], [high - s["mean"]]],
                    fmt="o",
                    color="black",
                    capsize=5,
                    zorder=4,
                )
        axis.axhline(0.0, color="gray", linewidth=1)
        axis.set_xlim(-0.5, len(others) - 0.5)
        axis.set_xticks(range(len(others)), [c.name for c in others], rotation=15)
        axis.set_ylabel(f"{report.metric}: candidate − ERM")
        axis.set_title(title, fontsize=10)
    figure.suptitle(
        f"per-seed differences to ERM (dots) and 95% CI ({'higher' if report.greater_is_better else 'lower'} "
        "is better)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"`{path.name}` (per-seed differences to ERM and their 95% CI)"
