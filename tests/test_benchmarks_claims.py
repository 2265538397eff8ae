"""benchmarks.claims: the project's claims recomputed from the stored records by the library's rule. No training: the
committed records and reports are read, and the committed claims table must be what they give today."""

from __future__ import annotations

import json

import pytest

from amp_hf.compare.statistics import NO_EVIDENCE, TOO_FEW_SEEDS, paired_difference
from benchmarks.claims import (
    EVIDENCE,
    README,
    RESULTS,
    families,
    judge_all,
    markdown,
    missing_from_docs,
    stated_agrees,
    write,
)


@pytest.fixture(scope="module")
def judged():
    return judge_all()


def test_every_stated_number_agrees_with_its_records(judged):
    wrong = [(j.family.name, j.claim.label, j.claim.stated) for j in judged if j.agrees is False]
    assert not wrong
    assert sum(j.agrees is True for j in judged) >= 100  # nearly every claim states a checkable number


def test_every_stated_number_is_in_the_docs_that_state_it():
    """A doc edited without its claim here (or a claim no doc states any more) is caught."""
    assert missing_from_docs() == []


def test_the_committed_table_is_what_the_records_give(judged, tmp_path):
    """claims.{md,json} are reproducible: rewriting them from the records changes nothing."""
    write(judged, tmp_path)
    assert (tmp_path / "claims.json").read_text() == (RESULTS / "claims.json").read_text()
    assert (tmp_path / "claims.md").read_text() == (RESULTS / "claims.md").read_text()
    json.loads((tmp_path / "claims.json").read_text())  # strict JSON (no NaN)


def test_the_issues_example_is_no_evidence_and_its_five_seeds_are_judged_in_the_readme_family(judged):
    """Issue 30, item 11: `cnn_long_noisy` against early-stopped ERM on Fashion-MNIST 5k, 3 seeds (evidence.md's
    frontier table); the README quotes the same comparison on seeds 0-4 (benchmarks.seeds_check), judged within the
    README table's family of 12."""
    rows = [j for j in judged if "Fashion-MNIST 5k" in j.claim.label and "best checkpoint" in j.claim.label]
    rows = [j for j in rows if "cnn_long_noisy" in j.claim.label]
    three = [j.result for j in rows if EVIDENCE in j.family.where]
    assert len(three) == 1
    r = three[0]
    assert r.n == 3 and r.mean == pytest.approx(-1.2967, abs=1e-4) and r.wins == 3
    assert r.ci95 == pytest.approx([-2.713, 0.120], abs=1e-3)
    assert r.verdict == NO_EVIDENCE
    five = [j.result for j in rows if README in j.family.where]
    assert len(five) == 1 and five[0].n == 5 and five[0].wins == 5 and five[0].ci95[1] < 0
    assert five[0].p_value < 0.05 and five[0].family_size == 12 and five[0].verdict == NO_EVIDENCE


def test_holm_runs_over_each_family_and_few_seeds_give_no_verdict(judged):
    for fam in families():
        rows = [j.result for j in judged if j.family.name == fam.name]
        assert len(rows) == len(fam.claims)
        tested = [r for r in rows if r.p_value is not None]
        assert all(r.family_size == len(tested) for r in tested), fam.name
        assert all(r.p_adjusted >= r.p_value for r in tested)
    assert all(j.result.verdict == TOO_FEW_SEEDS for j in judged if j.result.n < 3)
    demo_seeds = [j for j in judged if "own seeds 0, 1 and 2" in j.family.name]
    assert len(demo_seeds) == 4 and all(j.result.n == 3 for j in demo_seeds)


def test_a_zero_spread_is_judged_by_the_sign_flip_test(judged):
    """Full AMP in the last 12.5% of the steps never moved ERM's best checkpoint: every difference is 0."""
    (row,) = [j for j in judged if j.claim.label == "full AMP in the last 12.5%, best checkpoint"]
    assert row.result.differences == [0.0, 0.0, 0.0] and row.result.p_value == 1.0
    assert row.result.verdict == NO_EVIDENCE


def test_stated_numbers_are_checked_at_their_precision():
    r = paired_difference({0: 0.0, 1: 0.0, 2: 0.0}, {0: -1.0, 1: -2.0, 2: -3.0}, greater_is_better=False)
    assert stated_agrees("−2.00 ± 1.00", r) and stated_agrees("-2.0", r) and stated_agrees("−2", r)
    assert not stated_agrees("−2.1", r) and not stated_agrees("−2.00 ± 0.9", r)
    assert stated_agrees("[−4.48, +0.48]", r) and not stated_agrees("[−4.5, +0.6]", r)
    assert stated_agrees("107% of the cut", r) is None  # words are not checked


def test_the_summary_lists_every_claim_of_readme_and_evidence(judged):
    text = markdown(judged)
    summary = text.split("## Every family")[0]
    stated = [j for j in judged if README in j.family.where or EVIDENCE in j.family.where]
    assert summary.count("\n| ") - 1 == len(stated)  # one row each, after the header
    assert "[−2.71, +0.12]" in summary
