"""Paired statistics over seeds and the one rule that turns them into a verdict, written once: compare's report, the
benchmark studies (benchmarks/stats.py) and every claim in the docs use it.

A candidate and the baseline (ERM) run on the same seeds, so the question is about the per-seed differences
d_s = candidate_s − baseline_s: their mean, their sample standard deviation s (ddof = 1), the paired t interval
mean ± t_{0.975, n−1} · s / √n, and the two-sided paired t test's p-value. The rule:

- fewer than `MIN_SEEDS` (3) paired seeds: "too few seeds" (at n = 2 the interval rests on one degree of freedom, and
  a discrete metric's ties make a false "better" twice as likely as the nominal rate); the statistics are still given;
- zero spread (every difference equal): the t interval has width 0 and proves nothing, so the p-value is the exact
  sign-flip test's (the 2^n sign patterns of the differences are equally likely under "no effect": two of them reach
  |Σ d| when every d is the same non-zero value, so p = 2 / 2^n; all zero: p = 1);
- "better" / "worse" when the p-value, adjusted over the report's family of comparisons by Holm's step-down
  procedure (`judge_family`), is at most alpha = 0.05; the direction follows the mean difference and the metric;
- with a `margin` M, "equivalent" when the 95% interval lies within ±M (two one-sided tests at 2.5% each, also
  Holm-adjusted over the family); "no evidence" otherwise, which is not "no effect".

`half_width` is the raw interval's half-width. `mde80` is an *estimate* of the minimum detectable effect at 80% power,
(t_{1−α'/2, n−1} + t_{0.8, n−1}) · s / √n with the observed s standing in for the true spread and α' = α / m for a
family of m comparisons (the level Holm's first step uses): a true effect of `half_width` is detected only about half
the time.

Student's t CDF and quantile are computed exactly (the regularised incomplete beta function, inverted by bisection),
so there is no scipy dependency and no table to run out of.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

BETTER, WORSE, NO_EVIDENCE, TOO_FEW_SEEDS, EQUIVALENT = "better", "worse", "no evidence", "too few seeds", "equivalent"
MIN_SEEDS = 3
ALPHA = 0.05
POWER = 0.8
_ROUNDING = 1e-9
"""A spread below this fraction of the values' magnitude is floating-point rounding, i.e. no spread."""


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
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=1024)
def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (e.g. t_{0.975, 4} = 2.776), by bisection on the exact CDF (60+ correct bits).
    Cached: a report asks for the same few quantiles many times."""
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


def t_test_p_value(t: float, df: float) -> float:
    """The two-sided p-value of a t statistic: P(|T| >= |t|)."""
    return min(1.0, 2.0 * student_t_cdf(-abs(t), df))


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """The exact two-sided sign-flip (permutation) test of "no effect" for paired differences: the share of the 2^n
    sign patterns whose |Σ ±d| reaches the observed |Σ d|. Used when the spread is 0, where the t test divides by 0:
    n equal non-zero differences give 2 / 2^n, all zero give 1. Other differences: enumerates 2^n patterns (n <= 20)."""
    n = len(differences)
    if n == 0:
        return 1.0
    if n > 20:
        raise ValueError(f"the exact sign-flip test enumerates 2^n sign patterns; n = {n} is too many")
    if all(d == differences[0] for d in differences):
        return 1.0 if differences[0] == 0 else 2.0 / 2**n
    observed = abs(math.fsum(differences))
    tolerance = 1e-12 * max(1.0, math.fsum(abs(d) for d in differences))
    reached = 0
    for pattern in range(2**n):
        total = math.fsum(-d if pattern >> i & 1 else d for i, d in enumerate(differences))
        reached += abs(total) >= observed - tolerance
    return reached / 2**n


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (in the input order): sorted ascending, the i-th (from 0) is multiplied by
    m − i, and each is at least the one before it (capped at 1). Rejecting where the adjusted p <= alpha controls the
    family-wise error at alpha for any dependence between the tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _fmt(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class PairedDifference:
    """Candidate − baseline over the seeds both have, and what they allow one to say (the fields are compare.json's)."""

    seeds: list[int]
    differences: list[float]
    """candidate − baseline per seed, in the metric's units, in the order of `seeds`."""
    n: int
    mean: float | None
    std: float | None
    """Sample standard deviation (ddof = 1) of the differences; None for fewer than 2 seeds."""
    ci95: list[float] | None
    """[low, high] of the raw (unadjusted) paired-t 95% interval of the mean difference; None for fewer than 2 seeds.
    Zero spread gives a zero-width interval, which the verdict ignores (the sign-flip test judges it)."""
    half_width: float | None
    """t_{0.975, n−1} · std / √n: the raw interval's half-width."""
    mde80: float | None
    """Estimated minimum detectable effect at 80% power (two-sided, at the family's alpha / m), from the observed
    spread: an estimate, since the true spread is unknown."""
    wins: int
    """Seeds where the candidate is strictly better in the metric's direction."""
    p_value: float | None
    """Two-sided paired t test of "no effect"; the exact sign-flip test when the spread is 0; None for n < 2."""
    p_adjusted: float | None
    """p_value after Holm's adjustment over the family (`judge_family`); equal to p_value for a family of one."""
    verdict: str
    """'better' / 'worse' / 'equivalent' / 'no evidence' / 'too few seeds'."""
    reason: str
    """Why the verdict is what it is, in words."""
    greater_is_better: bool = True
    margin: float | None = None
    """The equivalence margin (metric units), when one was given."""
    p_equivalence: float | None = None
    """Two one-sided tests against ±margin: the larger one-sided p (<= 0.025 ⇔ the 95% interval lies within ±margin)."""
    p_equivalence_adjusted: float | None = None
    family_size: int = 1
    """How many comparisons the verdict was adjusted over."""
    excluded: list[int] = field(default_factory=list)
    """Seeds left out because a value was not finite (a diverged run); the caller names them."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_sided_p(differences: Sequence[float], shift: float, upper: bool, std: float, n: int) -> float:
    """P-value of the one-sided test "mean >= shift" (upper=False: evidence the mean is below shift) or "mean <= shift"
    (upper=True: evidence above), t test or, at zero spread, the sign-flip test on d − shift."""
    mean = statistics.mean(differences)
    if std > 0:
        t = (mean - shift) / (std / math.sqrt(n))
        return student_t_cdf(-t, n - 1) if upper else student_t_cdf(t, n - 1)
    shifted = [d - shift for d in differences]
    if all(s == 0 for s in shifted):
        return 1.0
    good = all(s > 0 for s in shifted) if upper else all(s < 0 for s in shifted)
    return 1.0 / 2**n if good else 1.0  # one-sided: only the all-one-sign pattern reaches Σ(d − shift)


def _verdict(result: PairedDifference, alpha: float) -> tuple[str, str]:
    """The verdict and its reason from a result's (adjusted) p-values."""
    n = result.n
    if n == 0:
        return TOO_FEW_SEEDS, "no paired seeds"
    ci = f"raw 95% interval [{_fmt(result.ci95[0])}, {_fmt(result.ci95[1])}]" if result.ci95 else "no interval"
    if n < MIN_SEEDS:
        return TOO_FEW_SEEDS, (
            f"{n} paired seed{'s' if n > 1 else ''} ({ci}): a verdict needs at least {MIN_SEEDS} (run more seeds)"
        )
    assert result.p_value is not None and result.p_adjusted is not None and result.mean is not None
    zero_spread = result.std == 0
    test = "exact sign-flip test (the differences have no spread)" if zero_spread else "paired t test"
    adjusted = (
        f", Holm-adjusted over {result.family_size} comparisons p = {_fmt(result.p_adjusted)}"
        if result.family_size > 1
        else ""
    )
    evidence = f"{test} p = {_fmt(result.p_value)}{adjusted}; {ci}"
    if result.p_adjusted <= alpha and result.mean != 0:
        better = (result.mean > 0) == result.greater_is_better
        return (BETTER if better else WORSE), f"{evidence}: the difference is non-zero at the {alpha:g} level"
    if result.margin is not None and result.p_equivalence_adjusted is not None:
        if result.p_equivalence_adjusted <= alpha / 2:
            return EQUIVALENT, f"{evidence}; the interval lies within ±{_fmt(result.margin)} (the margin)"
        evidence += f"; the interval does not lie within ±{_fmt(result.margin)}"
    return NO_EVIDENCE, f"{evidence}: no evidence of a difference (not evidence of none)"


def paired_difference(
    baseline: Mapping[int, float],
    candidate: Mapping[int, float],
    greater_is_better: bool,
    *,
    margin: float | None = None,
) -> PairedDifference:
    """The paired statistics of `candidate` against `baseline` ({seed: value}) over the seeds both have, judged as a
    family of one (`judge_family` adjusts a report's comparisons together). Seeds where either value is not finite
    are left out (`excluded`). Identical runs give std 0, p = 1 and 'no evidence'."""
    if margin is not None and not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number in the metric's units, got {margin!r}")
    common = sorted(set(baseline) & set(candidate))
    excluded = [s for s in common if not (math.isfinite(baseline[s]) and math.isfinite(candidate[s]))]
    seeds = [s for s in common if s not in excluded]
    diffs = [float(candidate[s]) - float(baseline[s]) for s in seeds]
    n = len(diffs)
    sign = 1.0 if greater_is_better else -1.0
    wins = sum(sign * d > 0 for d in diffs)
    mean = statistics.mean(diffs) if diffs else None  # exactly rounded (fmean may differ in the last bit)
    std = ci95 = half = mde = p = p_eq = None
    if n >= 2:
        std = statistics.stdev(diffs)
        # Equal differences computed from different values differ in their last bits (0.55 − 0.53 vs 0.56 − 0.54):
        # a spread at rounding level is no spread, or a tie of a discrete metric would get a t of 10^15.
        if std <= _ROUNDING * max(abs(float(v)) for s in seeds for v in (baseline[s], candidate[s])):
            std = 0.0
        scale = std / math.sqrt(n)
        half = student_t_quantile(1 - ALPHA / 2, n - 1) * scale
        ci95 = [mean - half, mean + half]
        # Zero spread: no estimate of the power (the sign-flip test's smallest p is 2 / 2^n whatever the effect).
        mde = (student_t_quantile(1 - ALPHA / 2, n - 1) + student_t_quantile(POWER, n - 1)) * scale if std else None
        p = t_test_p_value(mean / scale, n - 1) if std > 0 else sign_flip_p_value([mean] * n)
        if margin is not None:
            p_eq = max(_one_sided_p(diffs, margin, False, std, n), _one_sided_p(diffs, -margin, True, std, n))
    result = PairedDifference(
        seeds, diffs, n, mean, std, ci95, half, mde, wins, p, p, "", "", greater_is_better, margin, p_eq, p_eq, 1,
        excluded,
    )  # fmt: skip
    verdict, reason = _verdict(result, ALPHA)
    return replace(result, verdict=verdict, reason=reason)


def judge_family(results: Sequence[PairedDifference], alpha: float = ALPHA) -> list[PairedDifference]:
    """The verdicts of a family of comparisons (every verdict one report gives: candidates × baselines), with the
    family-wise error controlled at `alpha` by Holm's step-down procedure on the p-values (and, separately, on the
    equivalence tests' p-values). The family is the comparisons that have a p-value (n >= 2). The raw interval stays
    as it was; `p_adjusted`, `mde80` (at alpha / m), `family_size`, `verdict` and `reason` are redone."""
    tested = [i for i, r in enumerate(results) if r.p_value is not None]
    m = len(tested)
    adjusted = dict(zip(tested, holm_adjust([results[i].p_value for i in tested])))  # type: ignore[misc]
    with_margin = [i for i in tested if results[i].p_equivalence is not None]
    adjusted_eq = dict(zip(with_margin, holm_adjust([results[i].p_equivalence for i in with_margin])))  # type: ignore[misc]
    out = []
    for i, r in enumerate(results):
        if i in adjusted:
            assert r.std is not None
            level = alpha / max(m, 1)
            quantiles = student_t_quantile(1 - level / 2, r.n - 1) + student_t_quantile(POWER, r.n - 1)
            mde = quantiles * r.std / math.sqrt(r.n) if r.std else None
            r = replace(
                r,
                p_adjusted=adjusted[i],
                p_equivalence_adjusted=adjusted_eq.get(i),
                mde80=mde,
                family_size=m,
            )
        verdict, reason = _verdict(r, alpha)
        out.append(replace(r, verdict=verdict, reason=reason))
    return out
