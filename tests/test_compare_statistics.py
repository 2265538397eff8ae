"""amp_hf.compare.statistics: Student's t against tabulated and closed-form values, Holm and the sign-flip test on
worked examples, the paired statistics against hand-computed ones, each verdict reached on a case built to reach it,
and a seeded simulation of the family-wise false-"better" rate with every candidate null."""

from __future__ import annotations

import math
import random

import pytest

from amp_hf.compare.statistics import (
    BETTER,
    EQUIVALENT,
    MIN_SEEDS,
    NO_EVIDENCE,
    TOO_FEW_SEEDS,
    WORSE,
    holm_adjust,
    judge_family,
    paired_difference,
    regularized_incomplete_beta,
    sign_flip_p_value,
    student_t_cdf,
    student_t_quantile,
    t_test_p_value,
)


@pytest.mark.parametrize(
    ("df", "t"), [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042), (120, 1.980)]
)
def test_t_quantile_matches_the_tables(df, t):
    assert student_t_quantile(0.975, df) == pytest.approx(t, abs=5e-4)


def test_t_quantile_other_levels_and_the_cdf():
    assert student_t_quantile(0.995, 1) == pytest.approx(63.657, abs=1e-3)  # needs the bracket grown
    assert student_t_quantile(0.95, 5) == pytest.approx(2.015, abs=1e-3)
    assert student_t_quantile(0.025, 4) == pytest.approx(-2.776, abs=1e-3)
    assert student_t_quantile(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)  # the normal limit
    for df, t in ((2, 1.061), (4, 0.941), (10, 0.879)):  # the 80% quantiles the power estimate uses
        assert student_t_quantile(0.8, df) == pytest.approx(t, abs=1e-3)
    assert student_t_cdf(0.0, 7) == pytest.approx(0.5)
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/π
    assert regularized_incomplete_beta(2, 3, 0.4) == pytest.approx(0.5248)  # 1 − Σ_{j<2} C(4,j) .4^j .6^(4−j)
    with pytest.raises(ValueError, match="p must be in"):
        student_t_quantile(1.0, 3)


def test_t_test_p_values_in_closed_form():
    assert t_test_p_value(1.0, 1) == pytest.approx(0.5)  # Cauchy: 2 · (1/2 − atan(1)/π)
    assert t_test_p_value(-2.0, 2) == pytest.approx(1 - 2 / math.sqrt(6))  # df 2: F(t) = 1/2 + t / (2√(2 + t²))
    assert t_test_p_value(student_t_quantile(0.975, 4), 4) == pytest.approx(0.05)
    assert t_test_p_value(0.0, 5) == 1.0


def test_holm_on_a_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 → × 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 → running maximum 0.02, 0.03, 0.06, 0.06
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([0.02]) == [0.02] and holm_adjust([]) == []


def test_sign_flip_test_is_exact():
    assert sign_flip_p_value([0.02] * 3) == pytest.approx(2 / 2**3)
    assert sign_flip_p_value([-0.02] * 6) == pytest.approx(2 / 2**6)
    assert sign_flip_p_value([0.0] * 4) == 1.0
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)  # only ±(1 + 2 + 3) reach |6|
    assert sign_flip_p_value([1.0, -1.0, 2.0]) == pytest.approx(6 / 8)  # |±1 ±1 ±2| >= 2 in 6 of 8 patterns


def test_paired_statistics_by_hand():
    # differences 0.5, 0.1, 0.6: mean 0.4, s = sqrt(((.1)^2 + (.3)^2 + (.2)^2) / 2) = sqrt(0.07)
    p = paired_difference({0: 1.0, 1: 2.0, 2: 3.0, 9: 5.0}, {0: 1.5, 1: 2.1, 2: 3.6}, greater_is_better=True)
    assert p.seeds == [0, 1, 2] and p.n == 3  # seed 9 has no pair
    assert p.differences == pytest.approx([0.5, 0.1, 0.6])
    assert p.mean == pytest.approx(0.4) and p.std == pytest.approx(math.sqrt(0.07))
    scale = math.sqrt(0.07) / math.sqrt(3)
    assert p.half_width == pytest.approx(4.302653 * scale, rel=1e-6)
    assert p.ci95 == pytest.approx([0.4 - 4.302653 * scale, 0.4 + 4.302653 * scale], rel=1e-6)
    assert p.mde80 == pytest.approx((4.302653 + 1.060660) * scale, rel=1e-5)  # t_{.975,2} + t_{.8,2}
    t = 0.4 / scale
    assert p.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t)) and p.p_adjusted == p.p_value
    assert p.wins == 3 and p.verdict == NO_EVIDENCE  # 3/3 won, but the interval [−0.257, 1.057] contains 0
    assert "paired t test" in p.reason and "not evidence of none" in p.reason
    # lower is better: the same differences are losses
    assert paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 2.1, 2: 3.6}, greater_is_better=False).wins == 0


def test_each_verdict_is_reached():
    erm = {s: 0.80 for s in range(4)}
    higher = {0: 0.85, 1: 0.86, 2: 0.84, 3: 0.85}  # +5 points ± 0.8: the interval excludes 0 above
    assert paired_difference(erm, higher, greater_is_better=True).verdict == BETTER
    assert paired_difference(erm, higher, greater_is_better=False).verdict == WORSE  # e.g. an error rate
    lower = {s: 2 * 0.80 - v for s, v in higher.items()}
    assert paired_difference(erm, lower, greater_is_better=True).verdict == WORSE
    assert paired_difference(erm, lower, greater_is_better=False).verdict == BETTER
    noisy = {0: 0.90, 1: 0.70, 2: 0.86, 3: 0.76}  # mean +0.005, spread 0.09
    p = paired_difference(erm, noisy, greater_is_better=True)
    assert p.verdict == NO_EVIDENCE and p.ci95[0] < 0 < p.ci95[1] and p.half_width > abs(p.mean)
    assert p.mde80 > p.half_width  # a true effect of half_width is detected only about half the time


def test_fewer_than_three_seeds_give_statistics_but_no_verdict():
    assert MIN_SEEDS == 3
    p = paired_difference({0: 0.80, 1: 0.81}, {0: 0.90, 1: 0.9105}, greater_is_better=True)  # +10 points, twice
    assert p.n == 2 and p.ci95 is not None and p.ci95[0] > 0 and p.p_value < 0.05  # the raw interval excludes 0
    assert p.verdict == TOO_FEW_SEEDS and "at least 3" in p.reason
    one = paired_difference({0: 0.3}, {0: 0.1}, greater_is_better=False)
    assert one.n == 1 and one.mean == pytest.approx(-0.2) and one.wins == 1 and one.verdict == TOO_FEW_SEEDS
    assert one.std is None and one.ci95 is None and one.half_width is None and one.p_value is None
    none = paired_difference({0: 0.3}, {1: 0.1}, greater_is_better=False)
    assert none.n == 0 and none.mean is None and none.verdict == TOO_FEW_SEEDS


def test_a_zero_width_interval_is_never_better():
    """Identical differences on every seed (a discrete metric's ties): the exact sign-flip test judges them."""
    for n in (3, 4, 5):  # smallest possible p = 2 / 2^n = 0.25, 0.125, 0.0625: never below 0.05
        erm = {s: 0.50 + s / 100 for s in range(n)}
        p = paired_difference(erm, {s: v + 0.02 for s, v in erm.items()}, greater_is_better=True)
        assert p.std == 0.0 and p.half_width == 0.0 and p.mde80 is None  # rounding-level spread counts as none
        assert p.p_value == pytest.approx(2 / 2**n) and p.verdict == NO_EVIDENCE and "sign-flip" in p.reason
    erm = {s: 0.50 + s / 100 for s in range(6)}
    six = paired_difference(erm, {s: v - 0.02 for s, v in erm.items()}, greater_is_better=False)
    assert six.p_value == pytest.approx(2 / 64) and six.verdict == BETTER  # 6 equal wins: p = 1/32 < 0.05
    same = paired_difference({0: 0.3, 1: 0.4, 2: 0.5}, {0: 0.3, 1: 0.4, 2: 0.5}, greater_is_better=False)
    assert same.differences == [0.0] * 3 and same.std == 0.0 and same.p_value == 1.0 and same.verdict == NO_EVIDENCE


def test_non_finite_values_are_left_out_and_named():
    erm = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8}
    p = paired_difference(erm, {0: 0.6, 1: float("nan"), 2: 0.8, 3: float("inf")}, greater_is_better=True)
    assert p.seeds == [0, 2] and p.excluded == [1, 3] and p.n == 2 and p.verdict == TOO_FEW_SEEDS
    assert all(math.isfinite(v) for v in (p.mean, p.std, *p.ci95))


def test_equivalence_within_a_margin():
    erm = {s: 0.80 for s in range(5)}
    close = {0: 0.801, 1: 0.799, 2: 0.800, 3: 0.802, 4: 0.798}  # mean 0, interval about ±0.002
    p = paired_difference(erm, close, greater_is_better=True, margin=0.01)
    assert p.verdict == EQUIVALENT and p.ci95[0] > -0.01 and p.ci95[1] < 0.01 and p.p_equivalence <= 0.025
    assert paired_difference(erm, close, greater_is_better=True, margin=0.001).verdict == NO_EVIDENCE
    assert paired_difference(erm, close, greater_is_better=True).verdict == NO_EVIDENCE  # no margin, no claim
    with pytest.raises(ValueError, match="margin must be a positive number"):
        paired_difference(erm, close, greater_is_better=True, margin=-1)


def test_holm_over_a_family_withholds_a_lone_raw_better():
    erm = {s: 0.0 for s in range(3)}
    lone = paired_difference(erm, {0: 1.0, 1: 1.6, 2: 2.0}, greater_is_better=True)  # t ≈ 5.3, p ≈ 0.033
    assert lone.verdict == BETTER and 0.05 / 3 < lone.p_value < 0.05
    nulls = [paired_difference(erm, {0: 1.0, 1: -1.2, 2: 0.3}, greater_is_better=True) for _ in range(2)]
    judged = judge_family([lone, *nulls])
    assert judged[0].family_size == 3 and judged[0].p_adjusted == pytest.approx(3 * lone.p_value)
    assert judged[0].verdict == NO_EVIDENCE and "Holm-adjusted over 3" in judged[0].reason
    assert judged[0].ci95 == lone.ci95  # the raw interval is kept beside the adjusted verdict
    assert judged[0].mde80 > lone.mde80  # at alpha / 3
    assert judge_family([lone])[0].verdict == BETTER  # a family of one is the comparison alone


def test_family_wise_false_better_rate_with_null_candidates():
    """Five null candidates against one ERM on 3 seeds, 600 seeded trials: at least one false 'better' in at most 5%
    of the trials with the family adjusted; without it (each comparison alone) the rate is about 12%."""
    rng = random.Random(0)
    trials, adjusted, alone = 600, 0, 0
    for _ in range(trials):
        erm = {s: rng.gauss(0.0, 1.0) for s in range(3)}
        results = [
            paired_difference(erm, {s: rng.gauss(0.0, 1.0) for s in range(3)}, greater_is_better=True) for _ in range(5)
        ]
        alone += any(r.verdict == BETTER for r in results)
        adjusted += any(r.verdict == BETTER for r in judge_family(results))
    assert adjusted / trials <= 0.05
    assert alone / trials > 0.05  # the simulation can tell: unadjusted, the family's error is above 5%
