"""The head of a micro-batch for amp_ascent_fraction: every batched tensor cut, everything else left alone."""

from __future__ import annotations

from collections import namedtuple

import torch
from transformers import BatchEncoding

from amp_hf.batch import batch_size, head_of_batch


def test_dict_batch_is_cut_to_the_rounded_up_head_and_other_values_are_left_alone():
    inputs = {
        "input_ids": torch.arange(40).reshape(8, 5),  # padded variable-length rows: cut by rows, padding kept
        "attention_mask": torch.ones(8, 5),
        "labels": torch.arange(8),
        "temperature": torch.tensor(0.5),  # no batch dimension
        "prefix": torch.zeros(3, 2),  # another first dimension
        "note": "kept",
    }
    head = head_of_batch(inputs, 0.3)  # ⌈0.3·8⌉ = 3
    assert head["input_ids"].shape == (3, 5) and torch.equal(head["input_ids"], inputs["input_ids"][:3])
    assert head["labels"].tolist() == [0, 1, 2]
    assert head["temperature"] is inputs["temperature"] and head["prefix"] is inputs["prefix"]
    assert head["note"] == "kept"
    assert inputs["labels"].shape == (8,)  # the micro-batch itself is untouched for the descent pass


def test_at_least_one_example_and_the_whole_batch_at_one():
    inputs = {"x": torch.zeros(4, 2), "labels": torch.zeros(4)}
    assert head_of_batch(inputs, 0.01)["x"].shape == (1, 2)
    assert head_of_batch(inputs, 1.0) is inputs


def test_batch_encoding_tuples_and_namedtuples_keep_their_types():
    encoding = BatchEncoding({"input_ids": torch.zeros(4, 3, dtype=torch.long), "labels": torch.ones(4)})
    head = head_of_batch(encoding, 0.5)
    assert isinstance(head, BatchEncoding) and head["input_ids"].shape == (2, 3)
    pair = head_of_batch((torch.zeros(6, 2), torch.ones(6)), 0.5)
    assert isinstance(pair, tuple) and pair[0].shape == (3, 2) and pair[1].shape == (3,)
    Batch = namedtuple("Batch", "x y")
    cut = head_of_batch(Batch(torch.zeros(4, 1), torch.zeros(4)), 0.25)
    assert isinstance(cut, Batch) and cut.x.shape == (1, 1)


def test_batch_size_prefers_labels_and_finds_nested_tensors():
    assert batch_size({"prefix": torch.zeros(3, 2), "labels": torch.zeros(5)}) == 5
    assert batch_size({"inner": {"pixel_values": torch.zeros(7, 1, 2, 2)}}) == 7
    assert batch_size({"scalar": torch.tensor(1.0)}) is None
    assert head_of_batch({"scalar": torch.tensor(1.0)}, 0.5) == {"scalar": torch.tensor(1.0)}
