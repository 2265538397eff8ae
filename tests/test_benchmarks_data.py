"""benchmarks.data: label noise (exactly the rate, another class, from the run's seed) on both kinds of rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.data import Rows, add_label_noise, noisy_rows


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


def test_noisy_rows_of_tensors_and_of_token_lists_agree():
    labels = torch.arange(50) % 10
    images = Rows({"pixel_values": torch.zeros(50, 1, 2, 2), "labels": labels})
    texts = Rows([{"input_ids": [1, 2], "labels": int(y)} for y in labels])
    (noisy_images, rate_images), (noisy_texts, rate_texts) = (
        noisy_rows(rows, 10, 0.2, seed=1, salt="train") for rows in (images, texts)
    )
    assert rate_images == rate_texts == 0.2
    assert [int(noisy_images[i]["labels"]) for i in range(50)] == [noisy_texts[i]["labels"] for i in range(50)]
    assert torch.equal(images.rows["labels"], labels)  # the clean rows are not modified
