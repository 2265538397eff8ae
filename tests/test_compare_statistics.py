"""amp_hf.compare.statistics: Student's t quantile against tabulated values, the paired statistics against
hand-computed ones, and each verdict reached on a case built to reach it."""

from __future__ import annotations

import math

import pytest

from amp_hf.compare.statistics import (
    BETTER,
    NO_EVIDENCE,
    WORSE,
    paired_difference,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_quantile,
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
    assert student_t_cdf(0.0, 7) == pytest.approx(0.5)
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/π
    assert regularized_incomplete_beta(2, 3, 0.4) == pytest.approx(0.5248)  # 1 − Σ_{j<2} C(4,j) .4^j .6^(4−j)
    with pytest.raises(ValueError, match="p must be in"):
        student_t_quantile(1.0, 3)


def test_paired_statistics_by_hand():
    # differences 0.5, 0.1, 0.6: mean 0.4, s = sqrt(((.1)^2 + (.3)^2 + (.2)^2) / 2) = sqrt(0.07)
    p = paired_difference({0: 1.0, 1: 2.0, 2: 3.0, 9: 5.0}, {0: 1.5, 1: 2.1, 2: 3.6}, greater_is_better=True)
    assert p.seeds == [0, 1, 2] and p.n == 3  # seed 9 has no pair
    assert p.differences == pytest.approx([0.5, 0.1, 0.6])
    assert p.mean == pytest.approx(0.4) and p.std == pytest.approx(math.sqrt(0.07))
    half = 4.302653 * math.sqrt(0.07) / math.sqrt(3)
    assert p.detectable == pytest.approx(half, rel=1e-6)
    assert p.ci95 == pytest.approx([0.4 - half, 0.4 + half], rel=1e-6)
    assert p.wins == 3 and p.verdict == NO_EVIDENCE  # 3/3 won, but the interval [−0.257, 1.057] contains 0
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
    assert p.verdict == NO_EVIDENCE and p.ci95[0] < 0 < p.ci95[1] and p.detectable > abs(p.mean)


def test_identical_runs_are_no_evidence_not_an_error():
    p = paired_difference({0: 0.3, 1: 0.4}, {0: 0.3, 1: 0.4}, greater_is_better=False)
    assert p.differences == [0.0, 0.0] and p.mean == 0.0 and p.std == 0.0
    assert p.ci95 == [0.0, 0.0] and p.detectable == 0.0 and p.wins == 0 and p.verdict == NO_EVIDENCE


def test_one_seed_has_no_interval():
    p = paired_difference({0: 0.3}, {0: 0.1}, greater_is_better=False)
    assert p.n == 1 and p.mean == pytest.approx(-0.2) and p.wins == 1
    assert p.std is None and p.ci95 is None and p.detectable is None
    assert p.verdict == NO_EVIDENCE and "one paired seed" in p.reason
    assert paired_difference({0: 0.3}, {1: 0.1}, greater_is_better=False).n == 0
