"""Paired statistics over seeds, written once: compare's report and the benchmark studies (benchmarks/stats.py) use it.

A candidate and the baseline (ERM) run on the same seeds, so the question is about the per-seed differences
d_s = candidate_s − baseline_s: their mean, their sample standard deviation s (ddof = 1), and a t-based 95% confidence
interval mean ± t_{0.975, n−1} · s / √n. The verdict is "better" or "worse" only when that interval excludes 0 (in the
metric's direction), otherwise "no evidence". `detectable` is the interval's half-width t · s / √n: the smallest mean
difference that this spread and this number of seeds could have called non-zero.

Student's t quantile is computed exactly (the regularised incomplete beta function inverted by bisection), so there is
no scipy dependency and no table to run out of.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

BETTER, WORSE, NO_EVIDENCE = "better", "worse", "no evidence"


def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz evaluation)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of a Beta(a, b) variable at x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry I_x(a,b) = 1 − I_{1−x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (e.g. t_{0.975, 4} = 2.776), by bisection on the exact CDF (60+ correct bits)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:  # df = 1, p = 0.9995 needs ~637: grow the bracket first
        low, high = high, high * 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class PairedDifference:
    """Candidate − baseline over the seeds both have, and what they allow one to say."""

    seeds: list[int]
    differences: list[float]
    """candidate − baseline per seed, in the metric's units, in the order of `seeds`."""
    n: int
    mean: float | None
    std: float | None
    """Sample standard deviation (ddof = 1) of the differences; None for fewer than 2 seeds."""
    ci95: list[float] | None
    """[low, high] of the t-based 95% interval of the mean difference; None for fewer than 2 seeds."""
    wins: int
    """Seeds where the candidate is strictly better in the metric's direction."""
    verdict: str
    """'better' / 'worse' when ci95 excludes 0 (in the metric's direction), else 'no evidence'."""
    detectable: float | None
    """t_{0.975, n−1} · std / √n, the half-width of ci95: the smallest mean difference these seeds could have called
    non-zero."""
    reason: str
    """Why the verdict is what it is, in words."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(
    baseline: Mapping[int, float], candidate: Mapping[int, float], greater_is_better: bool
) -> PairedDifference:
    """The paired statistics of `candidate` against `baseline` ({seed: value}) over the seeds both have.

    Identical runs (every difference 0) give std 0, ci95 [0, 0] and 'no evidence'; one seed gives no interval
    ('no evidence': one difference has no spread to judge it against)."""
    seeds = sorted(set(baseline) & set(candidate))
    diffs = [float(candidate[s]) - float(baseline[s]) for s in seeds]
    n = len(diffs)
    sign = 1.0 if greater_is_better else -1.0
    wins = sum(sign * d > 0 for d in diffs)
    if n == 0:
        return PairedDifference(seeds, diffs, 0, None, None, None, 0, NO_EVIDENCE, None, "no paired seeds")
    mean = statistics.mean(diffs)  # exactly rounded (fmean may differ in the last bit)
    if n == 1:
        reason = "one paired seed: a single difference has no spread to judge it against (run more seeds)"
        return PairedDifference(seeds, diffs, 1, mean, None, None, wins, NO_EVIDENCE, None, reason)
    std = statistics.stdev(diffs)
    half = student_t_quantile(0.975, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if low > 0 or high < 0:
        verdict = BETTER if (low > 0) == greater_is_better else WORSE
        reason = f"the 95% interval [{low:.4g}, {high:.4g}] excludes 0"
    else:
        verdict = NO_EVIDENCE
        reason = f"the 95% interval [{low:.4g}, {high:.4g}] contains 0"
    return PairedDifference(seeds, diffs, n, mean, std, [low, high], wins, verdict, half, reason)
