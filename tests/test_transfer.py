"""The transfer study's pure parts: label noise, the speaker-disjoint split, the choice rule, paired statistics and the
shape of recommended.json. No training here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import transfer  # noqa: E402
from transfer import (  # noqa: E402
    add_label_noise,
    choose,
    group_split,
    paired_stats,
    passes_per_step,
    recommendation_entry,
    split_sentences,
)


@pytest.mark.parametrize("num_classes", [2, 10])
def test_label_noise_rate_and_determinism(num_classes):
    labels = np.arange(1000) % num_classes
    noisy, mask = add_label_noise(labels, num_classes, 0.2, seed=3, salt="train")
    assert mask.sum() == 200
    assert (noisy != labels).sum() == 200  # every replaced label is another class: exactly 20% are wrong
    assert np.array_equal(noisy[~mask], labels[~mask])
    assert noisy.min() >= 0 and noisy.max() < num_classes
    again, _ = add_label_noise(labels, num_classes, 0.2, seed=3, salt="train")
    assert np.array_equal(noisy, again)  # the same seed: ERM and AMP see the same noise
    other_seed, _ = add_label_noise(labels, num_classes, 0.2, seed=4, salt="train")
    other_split, _ = add_label_noise(labels, num_classes, 0.2, seed=3, salt="validation")
    assert not np.array_equal(noisy, other_seed) and not np.array_equal(noisy, other_split)
    assert np.array_equal(labels, np.arange(1000) % num_classes)  # the input is not modified


def test_label_noise_is_uniform_over_other_classes():
    labels = np.zeros(20000, dtype=int)
    noisy, mask = add_label_noise(labels, 10, 0.2, seed=0, salt="train")
    counts = np.bincount(noisy[mask], minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].mean()


def test_speaker_split_is_disjoint_and_proportional():
    rng = np.random.default_rng(0)
    speakers = [f"s{i}" for i in range(120) for _ in range(rng.integers(5, 40))]
    party = {f"s{i}": int(i % 3 == 0) for i in range(120)}
    strata = [party[s] for s in speakers]
    split = group_split(speakers, strata, {"train": 0.3, "val": 0.2, "test": 0.5}, seed=42)
    assert sorted(i for idx in split.values() for i in idx) == list(range(len(speakers)))
    owners = {name: {speakers[i] for i in idx} for name, idx in split.items()}
    assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    for name, share in (("train", 0.3), ("val", 0.2), ("test", 0.5)):
        assert abs(len(split[name]) / len(speakers) - share) < 0.08
        positives = np.mean([strata[i] for i in split[name]])
        assert abs(positives - np.mean(strata)) < 0.1  # both parties in every split
    assert split == group_split(speakers, strata, {"train": 0.3, "val": 0.2, "test": 0.5}, seed=42)


def test_sentences():
    text = "Thank you.Thank you so much. \nA few nights ago, everybody was reminded just what a lucky man I am! Yes."
    assert split_sentences(text) == ["A few nights ago, everybody was reminded just what a lucky man I am!"]
    assert split_sentences("one two three four five six. Seven eight nine ten eleven twelve?") == [
        "one two three four five six.",
        "Seven eight nine ten eleven twelve?",
    ]


def test_choice_recommends_the_best_only_if_it_beats_erm_on_every_tuning_seed():
    errors = {
        "ERM": {1000: 0.20, 1001: 0.22},
        "a": {1000: 0.18, 1001: 0.21},
        "b": {1000: 0.19, 1001: 0.215},
    }
    c = choose(errors)
    assert c["best"] == "a" and c["recommended"] == "a" and c["beats_erm_on_every_tuning_seed"]
    # The best mean, but worse than ERM on one seed: ERM is recommended; the best still is reported.
    errors["a"] = {1000: 0.15, 1001: 0.225}
    c = choose(errors)
    assert c["best"] == "a" and c["recommended"] == "ERM" and not c["beats_erm_on_every_tuning_seed"]
    # A tie with ERM on a seed is not a win.
    c = choose({"ERM": {0: 0.2, 1: 0.2}, "a": {0: 0.2, 1: 0.1}})
    assert c["recommended"] == "ERM"
    # ERM the best of all: the best AMP candidate is still named (it runs on the held-out tasks).
    c = choose({"ERM": {0: 0.1, 1: 0.1}, "a": {0: 0.3, 1: 0.3}, "b": {0: 0.2, 1: 0.2}})
    assert c["best"] == "b" and c["recommended"] == "ERM"


def test_paired_statistics():
    p = paired_stats({0: 0.20, 1: 0.22, 2: 0.21}, {0: 0.18, 1: 0.21, 2: 0.22})
    assert p["differences"] == pytest.approx([-0.02, -0.01, 0.01])
    assert p["mean"] == pytest.approx(-0.02 / 3)
    assert p["std"] == pytest.approx(np.std([-0.02, -0.01, 0.01], ddof=1))
    assert p["wins"] == 2 and p["within_noise"]
    assert p["relative_change"] == pytest.approx((-0.02 / 3) / 0.21)
    p = paired_stats({0: 0.2, 1: 0.2, 2: 0.2}, {0: 0.1, 1: 0.11, 2: 0.12, 3: 0.5})  # seed 3 has no ERM pair
    assert p["seeds"] == [0, 1, 2] and p["wins"] == 3 and not p["within_noise"]


def test_passes_model():
    assert passes_per_step({}, 0) == 1
    assert passes_per_step({"amp_inner_steps": 0}, 0) == 1
    assert passes_per_step({"amp_inner_steps": 1}, 0) == 2
    assert passes_per_step({"amp_inner_steps": 1, "amp_ascent_fraction": 0.25, "amp_interval": 2}, 0) == 1.125
    assert passes_per_step({"amp_inner_steps": 1}, 0.5) == 1.5


def test_recommended_json_shape():
    erm = recommendation_entry(None, 0.0, "ERM won")
    assert erm == {"args": {"amp_inner_steps": 0}, "evidence": "ERM won"}
    method = transfer.ALL_CANDIDATES[2]
    entry = recommendation_entry(method.kwargs, 0.5, "ok")
    assert set(entry) == {"args", "start_fraction", "evidence"} and entry["start_fraction"] == 0.5
    assert all(key.startswith("amp_") for key in entry["args"])
    assert "start_fraction" not in recommendation_entry(method.kwargs, 0.0, "ok")
    from amp_hf import AMPTrainingArguments

    for m in transfer.ALL_CANDIDATES[1:] + transfer.FRONTIER[1:]:  # every setting is valid AMPTrainingArguments
        AMPTrainingArguments(output_dir="unused", report_to="none", use_cpu=True, **m.kwargs)


def test_cache_key_changes_with_the_budget(monkeypatch):
    spec = transfer.Spec("vit_mnist", transfer.ERM, 0)
    key = spec.key()
    assert key == transfer.Spec("vit_mnist", transfer.ERM, 0).key()
    assert key != transfer.Spec("vit_mnist", transfer.ERM, 1).key()
    assert key != transfer.Spec("vit_mnist", transfer.ALL_CANDIDATES[1], 0).key()
    from dataclasses import replace

    monkeypatch.setitem(transfer.TASKS, "vit_mnist", replace(transfer.TASKS["vit_mnist"], epochs=1))
    assert spec.key() != key
