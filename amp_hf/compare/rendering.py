"""compare's report in words: compare.md (`markdown`), the console's summary (`console_lines`) and compare.png
(`write_plot`), all in the report's one number format (`Units`: the metric's units, or percentage points)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .candidates import ERM_NAME
from .statistics import ALPHA, MIN_SEEDS

if TYPE_CHECKING:
    from .report import ComparisonReport


def _p(value: float | None) -> str:
    return "—" if value is None else (f"{value:.2g}" if value >= 0.001 else "<0.001")


def _seconds(value: float | None, largest: float) -> str:
    """Seconds in one unit for a whole column, chosen by its largest value."""
    if value is None:
        return "—"
    if largest < 600:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min" if largest < 36_000 else f"{value / 3600:.2f} h"


def _bytes(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _direction(report: ComparisonReport) -> str:
    return f"{'higher' if report.greater_is_better else 'lower'} is better, per {report.direction_source}"


def _table(report: ComparisonReport, final: bool) -> list[str]:
    u = report.units
    m = report.family_size
    lines = [
        f"| candidate | mean ± std{u.header} | difference to ERM (mean ± std) | raw 95% CI | half-width | MDE80 (est.) "
        f"| wins | p | p (Holm, m = {m}) | verdict | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report.candidates:
        block = c.final if final else c.headline
        if block is None:
            continue
        b = block.to_dict()
        spread = f"{u.value(b['mean'])} ± {u.spread(b['std'])}"
        d = block.difference
        if d is None:
            role = "baseline" if c.name == ERM_NAME else "no finished run"
            lines.append(f"| {c.name} | {spread} | — | — | — | — | — | — | — | {role} | {'; '.join(c.notes)} |")
            continue
        lines.append(
            f"| {c.name} | {spread} | {u.difference(d.mean)} ± {u.spread(d.std)} | {u.interval(d.ci95)} "
            f"| {u.spread(d.half_width)} | {u.spread(d.mde80)} | {d.wins}/{d.n} | {_p(d.p_value)} "
            f"| {_p(d.p_adjusted)} | **{d.verdict}** | {'; '.join(c.notes)} |"
        )
    return lines


def _cost_table(report: ComparisonReport) -> list[str]:
    lines = [
        "| candidate | settings | train time (total) | time ratio to ERM | per-seed ratios | device-hours "
        "| peak memory | samples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    largest = max((c.time.total or 0.0 for c in report.candidates), default=0.0)
    for c in report.candidates:
        settings = ", ".join(f"{k.removeprefix('amp_')}={v}" for k, v in c.settings.items())
        span = c.time.ratio_range
        per_seed = f"{span[0]:.2f}–{span[1]:.2f}" if span else "—"
        ratio = "—" if c.time.ratio is None else f"{c.time.ratio:.2f}×"
        hours = c.cost.get("device_hours")
        speed = c.cost.get("samples_per_second")
        lines.append(
            f"| {c.name} | {settings} | {_seconds(c.time.total, largest)} | {ratio} | {per_seed} "
            f"| {'—' if hours is None else f'{hours:.3g}'} | {_bytes(c.cost.get('peak_memory_bytes'))} "
            f"| {'—' if speed is None else f'{speed:.3g}'} |"
        )
    return lines


def _per_seed(report: ComparisonReport) -> list[str]:
    """Every run's values (headline / final) and training time, so each number of the tables can be traced."""
    u = report.units
    lines = [f"| candidate | seed | headline{u.header} | final{u.header} | train time (s) |", "|---|---|---|---|---|"]
    for c in report.candidates:
        for seed in report.seeds:
            final = c.final.values.get(seed) if c.final is not None else None
            seconds = c.time.seconds.get(seed)
            lines.append(
                f"| {c.name} | {seed} | {u.value(c.headline.values.get(seed))} | {u.value(final)} "
                f"| {'—' if seconds is None else f'{seconds:.1f}'} |"
            )
    return lines


def markdown(report: ComparisonReport, plot_note: str) -> str:
    u = report.units
    margin = f"; `equivalent` when it lies within ±{u.spread(report.margin)}" if report.margin is not None else ""
    lines = [
        "# Does AMP help this task? (amp_hf.compare)",
        "",
        f"Metric: **{report.metric}**, {_direction(report)}, {report.split} split"
        + (", in percentage points (1 point = 0.01)" if u.name == "points" else "")
        + f"; paired seeds: {', '.join(map(str, report.seeds)) or 'none'} (n = {len(report.seeds)}). Differences are "
        "candidate − ERM. A verdict is `better`/`worse` when the paired test's p-value, Holm-adjusted over all "
        f"{report.family_size} comparisons of this report, is at most {ALPHA:g} (the exact sign-flip test when every "
        f"difference is the same), `too few seeds` below {MIN_SEEDS}, else `no evidence`{margin}. The raw 95% "
        "interval is shown beside it; MDE80 is an estimated minimum detectable effect at 80% power from the observed "
        "spread. Time: training without its evaluations and checkpoint saves; the ratio is of means. (AMP here is "
        "Adversarial Model Perturbation, "
        "not automatic mixed precision.)",
        "",
        f"## {report.headline_label().capitalize()}",
        "",
        *_table(report, final=False),
    ]
    if any(c.final is not None for c in report.candidates):
        lines += ["", f"## {report.split.capitalize()} {report.metric} of the final weights", ""]
        lines += _table(report, final=True)
    reasons = [
        f"- {c.name}: **{d.verdict}**, raw 95% CI {u.interval(d.ci95)}{u.suffix}; {d.reason}"
        for c in report.candidates
        if (d := c.headline.difference) is not None
    ]
    lines += ["", "Verdicts (headline):", "", *reasons, "", "## Cost", "", *_cost_table(report)]
    lines += ["", "## Per seed", "", *_per_seed(report)]
    if report.warnings:
        lines += ["", "## Warnings", "", *(f"- {w}" for w in report.warnings)]
    if report.missing:
        lines += ["", "## Missing runs", ""]
        lines += [
            f"- {m['candidate']} seed {m['seed']}: {m['reason']}" + (f" (log: `{m['log']}`)" if m.get("log") else "")
            for m in report.missing
        ]
    if len(report.looks) > 1:
        lines += ["", "## Looks at this comparison", ""]
        for look in report.looks:
            verdicts = "; ".join(f"{name}: {by}" for name, by in (look.get("verdicts") or {}).items())
            lines.append(f"- {look.get('written', 'before looks were recorded')}: n = {look.get('n')}. {verdicts}")
    lines += ["", f"Plot: {plot_note}", ""]
    return "\n".join(lines)


def console_lines(report: ComparisonReport) -> list[str]:
    """What the command prints: one line per candidate (the adjusted verdict, the raw interval, wins, the time ratio),
    its final-weights verdict and notes indented below it, then the warnings."""
    u = report.units
    lines = [
        f"{report.headline_label()} ({_direction(report)}); n = {len(report.seeds)} paired seeds, "
        f"{report.family_size} comparisons Holm-adjusted"
    ]
    for c in report.candidates:
        d = c.headline.difference
        if d is None:  # ERM, or a candidate without finished runs: only its notes (e.g. what was merged into it)
            if c.notes:
                lines.append(f"  {c.name}: {'baseline' if c.name == ERM_NAME else 'no finished run'}")
                lines += [f"      note: {note}" for note in c.notes]
            continue
        ratio = "n/a" if c.time.ratio is None else f"{c.time.ratio:.2f}× ERM"
        if len(c.time.ratio_per_seed) > 1:
            low, high = c.time.ratio_range
            ratio += f" (per seed {low:.2f}–{high:.2f})"
        lines.append(
            f"  {c.name}: {d.verdict} — difference {u.difference(d.mean)}{u.suffix}, raw 95% CI {u.interval(d.ci95)}, "
            f"wins {d.wins}/{d.n}, time {ratio}"
        )
        f = c.final.difference if c.final is not None else None
        if f is not None:
            lines.append(
                f"      final weights: {f.verdict} — {u.difference(f.mean)}{u.suffix}, "
                f"raw 95% CI {u.interval(f.ci95)}, wins {f.wins}/{f.n}"
            )
        lines += [f"      note: {note}" for note in c.notes]
    lines += [f"warning: {w}" for w in report.warnings]
    return lines


def write_plot(report: ComparisonReport, path: Path) -> str:
    """compare.png: per candidate its per-seed differences to ERM and the raw 95% CI, one panel per baseline. Without
    matplotlib (the `demo` / `bench` extras) the plot is skipped and the note says so."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped (matplotlib is not installed: pip install 'amp-hf[demo]')"
    u = report.units
    others = [c for c in report.candidates if c.name != ERM_NAME]
    panels = [("headline", report.headline_label())]
    if any(c.final is not None for c in others):
        panels.append(("final", f"{report.split} {report.metric}, final weights"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (kind, title) in zip(axes[0], panels):
        for i, c in enumerate(others):
            block = c.headline if kind == "headline" else c.final
            d = block.difference if block is not None else None
            if d is None:
                continue
            axis.scatter([i] * d.n, [x * u.scale for x in d.differences], color="tab:blue", alpha=0.7, zorder=3)
            if d.ci95 is not None:
                low, high = (x * u.scale for x in d.ci95)
                mean = d.mean * u.scale
                axis.errorbar([i + 0.15], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color="black",
                              capsize=5, zorder=4)  # fmt: skip
            axis.annotate(d.verdict, (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=8)
        axis.axhline(0.0, color="gray", linewidth=1)
        axis.set_xlim(-0.5, len(others) - 0.5)
        axis.set_xticks(range(len(others)), [c.name for c in others], rotation=15)
        axis.set_ylabel(f"{report.metric}: candidate − ERM{u.suffix}")
        axis.set_title(title, fontsize=10)
    figure.suptitle(f"per-seed differences to ERM (dots) and raw 95% CI ({_direction(report)})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return f"`{path.name}` (per-seed differences to ERM and their raw 95% CI)"
