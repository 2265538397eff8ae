"""amp_hf.tasks: the fixed splits the examples and the studies share, the model builders, the missing-asset error."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from amp_hf.tasks.data import group_split, holdout_splits, package_data_dir, split_sentences
from amp_hf.tasks.models import image_classifier


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


def test_holdout_splits_are_fixed_shares_of_the_training_data():
    def raw() -> DatasetDict:
        return DatasetDict({"train": Dataset.from_dict({"x": list(range(1000))})})

    splits = holdout_splits(raw(), validation_fraction=0.1, test_fraction=0.2)
    assert {k: len(v) for k, v in splits.items()} == {"train": 700, "validation": 100, "test": 200}
    assert sorted(x for v in splits.values() for x in v["x"]) == list(range(1000))  # disjoint, nothing lost
    again = holdout_splits(raw(), validation_fraction=0.1, test_fraction=0.2)
    assert again["test"]["x"] == splits["test"]["x"]  # seed 42, not the training seed
    given = DatasetDict({"train": Dataset.from_dict({"x": [1, 2]}), "test": Dataset.from_dict({"x": [3]})})
    assert holdout_splits(given, 0.0, 0.5)["test"]["x"] == [3]  # a given split is kept
    with pytest.raises(ValueError, match="no 'train' split"):
        holdout_splits(DatasetDict({"test": Dataset.from_dict({"x": [1]})}))


def test_image_classifier_builds_the_example_models_and_refuses_others():
    resnet = image_classifier("resnet", num_labels=10, channels=1, image_size=28)
    assert resnet.config.hidden_sizes == [32, 64, 128] and resnet.config.num_labels == 10
    vit = image_classifier("vit", 3, 1, 28, patch_size=7, vit_hidden_size=32, vit_num_layers=1, vit_num_heads=2)
    assert (vit.config.patch_size, vit.config.hidden_size, vit.config.intermediate_size) == (7, 32, 64)
    with pytest.raises(ValueError, match="model_type must be one of"):
        image_classifier("mlp", 10, 1, 28)


def test_a_missing_offline_asset_says_how_to_install_it():
    with pytest.raises(RuntimeError, match="pip install no-such-package"):
        package_data_dir("no_such_package_amp_hf", "pip install no-such-package")
