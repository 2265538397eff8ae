"""The comparison's report: per candidate the paired difference to ERM at each baseline (the headline, i.e. the best
checkpoint's value for early-stopping runs, and the final weights'), judged by the one rule of `statistics` over the
report's whole family of verdicts (candidates × baselines), its cost, and its notes; written as compare.json
(`ComparisonReport.to_dict()`, strict JSON), compare.md (tables) and compare.png (the per-seed differences), and
summarised on the console (`console_lines`).

What the report never does: guess the metric's direction (it comes from the runs, from --greater_is_better, or from
`LOWER_IS_BETTER`; otherwise the report is refused), mix a diverged run's NaN into a mean (a non-finite value is a
diverged run, named per candidate and left out of the paired statistics), or forget earlier looks (each report written
appends one to compare.json's `looks`, and a verdict reached after looks with fewer seeds is warned about).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .candidates import ERM_NAME, Candidate, CompareError, merge_notes, outside_regime
from .jsonfiles import read_json, write_json
from .rendering import markdown, write_plot
from .runs import TEST, RunRecord, choose_source, split_of
from .statistics import (
    ALPHA,
    BETTER,
    EQUIVALENT,
    MIN_SEEDS,
    WORSE,
    PairedDifference,
    judge_family,
    paired_difference,
)

JSON_FILE, MARKDOWN_FILE, PLOT_FILE = "compare.json", "compare.md", "compare.png"

LOWER_IS_BETTER = ("loss", "error", "err", "wer", "cer", "ter", "perplexity", "ppl", "nll", "mae", "mse", "rmse")
"""Metric names (whole, or the last `_` part: `eval_word_error` → `error`) whose lower values are better. Any other
metric needs its direction recorded by the runs (metric_for_best_model + greater_is_better) or --greater_is_better."""

FRACTION_NAMES = ("accuracy", "acc", "error", "err", "f1", "precision", "recall", "auc")
"""Metric names reported in percentage points when every value lies in [0, 1] (0.012 → 1.2 points)."""

DIRECTION_FLAG = "--greater_is_better (greater_is_better= in Python)"


def _named(metric: str, names: Sequence[str]) -> bool:
    return metric in names or metric.rsplit("_", 1)[-1] in names


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------- the numbers
@dataclass(frozen=True)
class Units:
    """One number format for a report: the metric's units (or percentage points for a fraction) and one number of
    decimals, chosen so that the differences' spread shows two significant digits."""

    scale: float = 1.0
    """100 for a fraction shown in points, else 1."""
    name: str = ""
    """"points" or "" (the metric's own units)."""
    decimals: int = 3

    @classmethod
    def choose(cls, metric: str, values: Sequence[float], spreads: Sequence[float]) -> Units:
        finite = [v for v in values if math.isfinite(v)]
        points = bool(finite) and _named(metric, FRACTION_NAMES) and all(0.0 <= v <= 1.0 for v in finite)
        scale = 100.0 if points else 1.0
        spread = [s * scale for s in spreads if math.isfinite(s) and s > 0]
        if spread:  # two significant digits of the smallest spread
            decimals = 1 - math.floor(math.log10(min(spread)))
        else:  # three of the largest value
            largest = max((abs(v) * scale for v in finite), default=1.0) or 1.0
            decimals = 2 - math.floor(math.log10(largest))
        return cls(scale, "points" if points else "", max(0, min(decimals, 8)))

    def value(self, x: float | None) -> str:
        if x is None:
            return "—"
        return f"{x * self.scale:.{self.decimals}f}" if math.isfinite(x) else "diverged"

    def difference(self, x: float | None) -> str:
        return "—" if x is None else f"{x * self.scale:+.{self.decimals}f}"

    def spread(self, x: float | None) -> str:
        return "—" if x is None else f"{x * self.scale:.{self.decimals}f}"

    def interval(self, ci: Sequence[float] | None) -> str:
        return "—" if ci is None else f"[{self.difference(ci[0])}, {self.difference(ci[1])}]"

    @property
    def suffix(self) -> str:
        return f" {self.name}" if self.name else ""

    @property
    def header(self) -> str:
        return f" ({self.name})" if self.name else ""


# ------------------------------------------------------------------------------------------------- the report
@dataclass
class Baseline:
    """One candidate's values at one baseline, and (for all but ERM) its paired difference to ERM's."""

    values: dict[int, float]
    difference: PairedDifference | None = None

    @property
    def diverged(self) -> list[int]:
        """Seeds whose value is not finite: the run diverged (the Trainer logs NaN)."""
        return sorted(s for s, v in self.values.items() if not math.isfinite(v))

    def to_dict(self) -> dict[str, Any]:
        finite = [v for v in self.values.values() if math.isfinite(v)]
        return {
            "values": {str(seed): (v if math.isfinite(v) else None) for seed, v in self.values.items()},
            "diverged": self.diverged,
            "mean": statistics.fmean(finite) if finite else None,
            "std": statistics.stdev(finite) if len(finite) > 1 else None,
            "difference": self.difference.to_dict() if self.difference is not None else None,
        }


@dataclass
class Time:
    """A candidate's training time: per seed, in total, and against ERM's as a ratio of means over the seeds both
    have (a mean of per-seed ratios would weigh a fast seed like a slow one); the per-seed ratios show the spread."""

    seconds: dict[int, float]
    """`RunRecord.train_seconds`: training without the evaluations and checkpoint saves made during it."""
    ratio: float | None = None
    ratio_per_seed: dict[int, float] = field(default_factory=dict)

    @property
    def total(self) -> float | None:
        return math.fsum(self.seconds.values()) if self.seconds else None

    @property
    def ratio_range(self) -> tuple[float, float] | None:
        """(lowest, highest) per-seed ratio: a wide range shows the machine's load changed during the comparison."""
        ratios = self.ratio_per_seed.values()
        return (min(ratios), max(ratios)) if ratios else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": {str(s): v for s, v in self.seconds.items()},
            "total_seconds": self.total,
            "ratio": self.ratio,
            "ratio_per_seed": {str(s): v for s, v in self.ratio_per_seed.items()},
            "ratio_range": list(self.ratio_range) if self.ratio_range else None,
        }


@dataclass
class CandidateResult:
    """One candidate's entry of the report."""

    name: str
    settings: dict[str, Any]
    headline: Baseline
    final: Baseline | None
    time: Time
    cost: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    """Shown beside the verdict: a diverged run, a preset used outside its regime, candidates merged into this one."""

    @property
    def time_ratio(self) -> float | None:
        return self.time.ratio

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "settings": self.settings,
            "notes": self.notes,
            **self.headline.to_dict(),
            "final": self.final.to_dict() if self.final is not None else None,
            "time": self.time.to_dict(),
            "cost": self.cost,
        }


@dataclass
class ComparisonReport:
    """What compare found; `to_dict()` is exactly compare.json."""

    metric: str
    greater_is_better: bool
    direction_source: str
    """Where the direction came from: the flag, the runs' greater_is_better, or the name (LOWER_IS_BETTER)."""
    seeds: list[int]
    """The seeds every candidate has (the ones the statistics use)."""
    requested_seeds: list[int]
    source: str
    early_stopping: bool
    candidates: list[CandidateResult]
    units: Units = field(default_factory=Units)
    margin: float | None = None
    warnings: list[str] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    looks: list[dict[str, Any]] = field(default_factory=list)
    """Every report written on this output folder, oldest first (`write` appends this one)."""

    def candidate(self, name: str) -> CandidateResult:
        return next(c for c in self.candidates if c.name == name)

    @property
    def family_size(self) -> int:
        return sum(1 for d in self._differences() if d.p_value is not None)

    def _differences(self) -> list[PairedDifference]:
        blocks = [b for c in self.candidates for b in (c.headline, c.final) if b is not None]
        return [b.difference for b in blocks if b.difference is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "direction_source": self.direction_source,
            "seeds": self.seeds,
            "requested_seeds": self.requested_seeds,
            "source": self.source,
            "early_stopping": self.early_stopping,
            "headline": self.headline_label(),
            "units": {"name": self.units.name or None, "scale": self.units.scale, "decimals": self.units.decimals},
            "alpha": ALPHA,
            "family_size": self.family_size,
            "margin": self.margin,
            "warnings": self.warnings,
            "missing": self.missing,
            "looks": self.looks,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def headline_label(self) -> str:
        where = "the best-validation checkpoint" if self.early_stopping else "the final weights"
        return f"{self.split} {self.metric} of {where}"

    @property
    def split(self) -> str:
        return "test" if self.source == TEST else "validation"

    def look(self) -> dict[str, Any]:
        """This report as one look at the comparison: its seeds and verdicts."""
        verdicts = {}
        for c in self.candidates:
            blocks = {"headline": c.headline, "final": c.final}
            judged = {k: b.difference.verdict for k, b in blocks.items() if b is not None and b.difference is not None}
            if judged:
                verdicts[c.name] = judged
        return {"metric": self.metric, "n": len(self.seeds), "seeds": self.seeds, "verdicts": verdicts}

    def record_look(self, previous: Any) -> None:
        """Appends this look to the looks of the previous compare.json (`previous`, its parsed content or None), and
        warns when a verdict that claims something comes after looks with fewer seeds: adding seeds until a verdict
        appears raises the false-'better' rate above the 5% the rule promises."""
        looks: list[dict[str, Any]] = []
        if isinstance(previous, dict) and isinstance(previous.get("looks"), list):
            looks = [look for look in previous["looks"] if isinstance(look, dict)]
        elif isinstance(previous, dict) and isinstance(previous.get("seeds"), list):  # a report from before looks
            looks = [{"metric": previous.get("metric"), "n": len(previous["seeds"]), "seeds": previous["seeds"]}]
        current = self.look()
        last = {k: v for k, v in looks[-1].items() if k != "written"} if looks else None
        if last != current:
            looks.append({**current, "written": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        self.looks = looks
        fewer = sorted({look.get("n") for look in looks if look.get("metric") == self.metric} - {None})
        fewer = [n for n in fewer if isinstance(n, int) and n < len(self.seeds)]
        claims = [f"{name}: {v}" for name, by in current["verdicts"].items() for v in by.values() if v in _CLAIMS]
        if fewer and claims:
            self.warnings.append(
                f"repeated looks: this comparison was reported before with fewer seeds (n = "
                f"{', '.join(map(str, fewer))}; now {len(self.seeds)}), and now says {', '.join(sorted(set(claims)))}. "
                "Adding seeds until a verdict appears makes a false 'better' more likely than the rule's 5%: decide "
                "the number of seeds before looking, or confirm the verdict on fresh seeds (compare.json's looks lists "
                "them)"
            )

    def write(self, output_dir: Path) -> None:
        """compare.json (strict JSON: allow_nan=False), compare.md and compare.png, after recording this look."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.record_look(read_json(output_dir / JSON_FILE))
        write_json(output_dir / JSON_FILE, self.to_dict())
        note = write_plot(self, output_dir / PLOT_FILE)
        (output_dir / MARKDOWN_FILE).write_text(markdown(self, note))


_CLAIMS = (BETTER, WORSE, EQUIVALENT)


# ------------------------------------------------------------------------------------------------- building it
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
    expected = candidate.expected_settings()  # resolved as its runs resolve it (presets.resolve)
    for record in records:
        used = record.amp_config
        if not used and record.recorded and candidate.config.enabled:  # recorded, by a trainer with no AMP step
            trainer = record.trainer_class or "trainer without AMP (a plain Trainer)"
            return (
                f"candidate {candidate.name}: run seed {record.seed} was trained by a {trainer}, which has no AMP "
                "step: its settings did not apply (use AMPTrainer in the script)"
            )
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


def resolve_direction(metric: str, records: Sequence[RunRecord], flag: bool | None) -> tuple[bool, str]:
    """(greater_is_better, where it came from), never guessed: the flag; else the runs' greater_is_better when every
    run chose its best checkpoint on this metric (and agrees); else lower-is-better for a LOWER_IS_BETTER name.
    Otherwise CompareError naming the flag. A run that chose its best checkpoint with higher-is-better on a metric
    named like an error (transformers defaults greater_is_better to True for any name not ending in 'loss') is
    refused too: which checkpoint is "best" was then decided backwards."""
    lower_by_name = _named(metric, LOWER_IS_BETTER)
    if flag is not None:
        return bool(flag), "--greater_is_better"
    chose_on_it = [
        r
        for r in records
        if r.training_args
        and r.metric_for_best_model
        and (r.metric_for_best_model == metric or r.metric_for_best_model.endswith("_" + metric))
    ]
    recorded = {r.training_args.get("greater_is_better") for r in chose_on_it} - {None}
    if chose_on_it and len(chose_on_it) == len(records) and len(recorded) == 1:
        greater = bool(recorded.pop())
        if greater and lower_by_name:
            raise CompareError(
                f"--metric {metric}: the runs chose their best checkpoint with greater_is_better=True, but {metric!r} "
                "is named like a lower-is-better metric (transformers sets greater_is_better=True for any "
                "metric_for_best_model not ending in 'loss'). If lower is better, the runs kept their worst "
                "checkpoint: add --greater_is_better false to the training command and rerun; if higher really is "
                f"better, pass {DIRECTION_FLAG} true to compare"
            )
        return greater, "the runs' greater_is_better"
    if lower_by_name:
        return False, "its name"
    raise CompareError(
        f"--metric {metric}: which direction is better is not recorded by the runs (no metric_for_best_model "
        f"{metric} with greater_is_better in every run) and {metric!r} is not a lower-is-better name "
        f"({', '.join(LOWER_IS_BETTER)}): pass {DIRECTION_FLAG} true or false. The runs are kept: rerunning with the "
        "flag trains nothing"
    )


def _time(records: Sequence[RunRecord]) -> Time:
    """Each run's training time without the evaluations and checkpoint saves made during training
    (`RunRecord.train_seconds`: measured by the recorder, else estimated, which the report says)."""
    return Time({r.seed: float(r.train_seconds) for r in records if _finite(r.train_seconds) and r.train_seconds > 0})


def _compare_time(time: Time, erm: Time) -> None:
    """The ratio of means over the seeds both have, and the per-seed ratios (whose spread shows a loaded machine)."""
    both = [s for s in time.seconds if s in erm.seconds]
    if both:
        time.ratio = statistics.fmean(time.seconds[s] for s in both) / statistics.fmean(erm.seconds[s] for s in both)
        time.ratio_per_seed = {s: time.seconds[s] / erm.seconds[s] for s in both}


def _cost(records: Sequence[RunRecord], time: Time) -> dict[str, Any]:
    """What the runs cost, from what RunRecord offers (None where a run folder does not say)."""
    memory = [r.peak_memory_bytes for r in records if _finite(r.peak_memory_bytes)]
    speeds = [r.samples_per_second for r in records if _finite(r.samples_per_second)]
    kinds = sorted({r.memory_kind for r in records} - {""})
    devices = {r.seed: r.devices for r in records}
    hours = [time.seconds[s] * devices[s] / 3600 for s in time.seconds if s in devices]
    return {
        "runs": len(records),
        "train_seconds_total": time.total,
        "devices": max(devices.values(), default=None),
        "device_hours": math.fsum(hours) if hours else None,
        "peak_memory_bytes": max(memory) if memory else None,
        "memory_kind": ", ".join(kinds) or None,
        "samples_per_second": statistics.fmean(speeds) if speeds else None,
        "attempts": sum(r.attempts for r in records),
    }


def _diverged_note(baseline: Baseline, of: int, where: str) -> str | None:
    seeds = baseline.diverged
    if not seeds:
        return None
    return (
        f"diverged on {len(seeds)} of {of} seeds ({where}: seed {', '.join(map(str, seeds))} recorded a non-finite "
        "value); those seeds are left out of its paired statistics"
    )


def candidate_notes(candidate: Candidate, records: Sequence[RunRecord], headline: Baseline, final: Baseline | None,
                    seeds: Sequence[int]) -> list[str]:  # fmt: skip
    """The notes shown beside a candidate's verdict: the candidates merged into it, its preset used outside the regime
    it was chosen for (another optimizer family), its diverged seeds."""
    notes: list[str | None] = [*merge_notes([candidate])]
    notes += sorted({outside_regime(candidate, r.optimizer) for r in records} - {None})
    notes.append(_diverged_note(headline, len(seeds), "headline"))
    if final is not None and final.diverged != headline.diverged:
        notes.append(_diverged_note(final, len(seeds), "final weights"))
    return [n for n in notes if n]


def _metric_name(metric: str | None) -> tuple[str | None, bool]:
    """(the metric name without its split prefix, whether the test split was asked for by name)."""
    if not metric:
        return None, False
    split, name = split_of(metric)
    return name, split == TEST


def build_report(
    candidates: Sequence[Candidate],
    seeds: Sequence[int],
    records: Mapping[tuple[str, int], RunRecord],
    missing: list[dict[str, Any]],
    metric: str | None = None,
    greater_is_better: bool | None = None,
    margin: float | None = None,
) -> ComparisonReport:
    """The report from the finished runs' records. Raises CompareError when there is nothing to compare, when no run
    recorded `metric` (listing the metrics the runs have), and when the metric's direction is unknown."""
    if margin is not None and (isinstance(margin, bool) or not _finite(margin) or margin <= 0):
        raise CompareError(f"--margin must be a positive number in the metric's units, got {margin!r}")
    warnings: list[str] = []
    missing = list(missing)
    all_records = list(records.values())
    if not all_records:
        raise CompareError(
            "no run finished, so there is nothing to compare: "
            + "; ".join(f"{m['candidate']} seed {m['seed']}: {m['reason']}" for m in missing)
        )
    asked, test_by_name = _metric_name(metric)
    metric = asked or _default_metric(all_records, warnings)
    usable = {key: r for key, r in records.items() if r.has_metric(metric)}
    if not usable:
        recorded = sorted({k for r in all_records for k in r.recorded_metrics()})
        raise CompareError(
            f"--metric {metric}: no run recorded it (looked for test_{metric}, eval_test_{metric}, eval_{metric} and "
            f"eval_<name>_{metric}). The runs recorded: {', '.join(recorded)}. Give --metric as the name after the "
            "eval_/test_ prefix, e.g. --metric loss"
        )
    ignored = {name: why for r in all_records for name, why in r.ignored_results.items()}
    for name, why in sorted(ignored.items()):
        warnings.append(f"{name} is not read: it {why}")
    for name, seed in sorted(set(records) - set(usable)):
        missing.append({"candidate": name, "seed": seed, "reason": f"the run recorded no {metric}"})
    greater_is_better, direction_source = resolve_direction(metric, list(usable.values()), greater_is_better)
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
    if test_by_name and source != TEST:
        have = sum(r.has_test(metric) for r in used)
        raise CompareError(
            f"--metric test_{metric} asks for the test split, but only {have} of {len(used)} runs have a test split's "
            f"{metric}: give --metric {metric} to compare validation values"
        )
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

    results: list[CandidateResult] = []
    for candidate in candidates:  # one without runs stays listed, with no values
        own = [usable[(candidate.name, s)] for s in complete if (candidate.name, s) in usable]
        warning = _settings_warning(candidate, own)
        if warning:
            warnings.append(warning)
        pairs = {r.seed: r.values(metric, source) for r in own}
        headline = Baseline({s: v for s, (v, _) in pairs.items() if v is not None})
        finals = {s: f for s, (_, f) in pairs.items() if f is not None}
        final = Baseline(finals) if pairs and len(finals) == len(pairs) and early_stopping else None
        time = _time(own)
        notes = candidate_notes(candidate, own, headline, final, complete)
        results.append(CandidateResult(candidate.name, dict(candidate.arguments), headline, final, time, {}, notes))
    erm = next(r for r in results if r.name == ERM_NAME)
    if erm.final is None:
        for r in results:
            r.final = None  # the final weights are compared only where ERM has them too
    for r in results:
        if r is not erm and r.headline.values:  # a candidate without finished runs has nothing to judge
            r.headline.difference = paired_difference(
                erm.headline.values, r.headline.values, greater_is_better, margin=margin
            )
            if r.final is not None and erm.final is not None:
                r.final.difference = paired_difference(
                    erm.final.values, r.final.values, greater_is_better, margin=margin
                )
            _compare_time(r.time, erm.time)
        elif r is erm:
            r.time.ratio = 1.0 if r.time.seconds else None
        r.cost = _cost([usable[(r.name, s)] for s in complete if (r.name, s) in usable], r.time)
    _judge(results)

    estimated = [r for r in used if r.train_seconds_estimated and _finite(r.train_seconds)]
    if estimated:
        warnings.append(
            f"time: {len(estimated)} of {len(used)} runs' train_seconds are estimates (train_runtime minus the "
            "evaluation runtimes the Trainer logged; checkpoint saves are still in them)"
        )
    for r in results:
        low, high = r.time.ratio_range or (0.0, 0.0)
        if len(r.time.ratio_per_seed) > 1 and high > 1.5 * low:
            warnings.append(
                f"candidate {r.name}: its per-seed time ratios range from {low:.2f}× to {high:.2f}×: "
                "the machine's load changed during the comparison, so its ratio of means is uncertain"
            )
    all_values = [v for r in results for b in (r.headline, r.final) if b is not None for v in b.values.values()]
    spreads = [d.std for r in results for d in _blocks(r) if d.std]
    units = Units.choose(metric, all_values, spreads)
    if margin is not None and units.name == "points" and margin >= 1:
        raise CompareError(
            f"--margin {margin:g} is in the metric's units: {metric} is a fraction, so 1 point is 0.01 "
            f"(--margin 0.01); a margin of {margin:g} would call every candidate equivalent"
        )
    if len(complete) < MIN_SEEDS:
        warnings.append(
            f"{len(complete)} paired seed(s): a verdict needs at least {MIN_SEEDS}, so every verdict is 'too few "
            "seeds' (the statistics are still given); run more seeds"
        )
    return ComparisonReport(
        metric, greater_is_better, direction_source, complete, list(seeds), source, early_stopping, results, units,
        margin, warnings, missing,
    )  # fmt: skip


def _blocks(result: CandidateResult) -> list[PairedDifference]:
    return [b.difference for b in (result.headline, result.final) if b is not None and b.difference is not None]


def _judge(results: Sequence[CandidateResult]) -> None:
    """Every verdict the report gives (candidates × baselines) judged as one family (Holm)."""
    slots = [(r, b) for r in results for b in (r.headline, r.final) if b is not None and b.difference is not None]
    for (_, block), judged in zip(slots, judge_family([b.difference for _, b in slots])):
        block.difference = judged
