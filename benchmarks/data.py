"""The studies' data: rows a Trainer can batch, label noise, and each data set's fixed splits read once per worker.

The data sets themselves come from `amp_hf.tasks.data` (shared with the examples); this module adds what only the
studies need: tensors and token lists as dataset rows, and exactly-20%-wrong label noise drawn from the run's seed.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from amp_hf.tasks import data as datasets
from amp_hf.tasks.data import add_label_noise  # the noise the examples' demo draws too: one definition
from amp_hf.tasks.models import minilm_path

IMAGE_DATA = ("fmnist", "mnist")
TEXT_DATA = ("rt", "speeches")


class Rows(torch.utils.data.Dataset):
    """Dict rows over tensors (images) or a list of dicts (tokenised text)."""

    def __init__(self, rows: dict[str, torch.Tensor] | list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows) if isinstance(self.rows, list) else len(next(iter(self.rows.values())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i] if isinstance(self.rows, list) else {k: v[i] for k, v in self.rows.items()}


def stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The image collator: one tensor per key."""
    return {k: torch.stack([row[k] for row in rows]) for k in rows[0]}


def noisy_rows(rows: Rows, num_classes: int, rate: float, seed: int, salt: str) -> tuple[Rows, float]:
    """`rows` with label noise (see add_label_noise); returns the new rows and the realised wrong-label rate."""
    if isinstance(rows.rows, list):
        labels = [int(r["labels"]) for r in rows.rows]
        noisy, _ = add_label_noise(labels, num_classes, rate, seed, salt)
        new = [{**r, "labels": int(y)} for r, y in zip(rows.rows, noisy)]
        return Rows(new), float(np.mean(np.asarray(labels) != noisy))
    labels = rows.rows["labels"].numpy()
    noisy, _ = add_label_noise(labels, num_classes, rate, seed, salt)
    return Rows({**rows.rows, "labels": torch.from_numpy(noisy)}), float(np.mean(labels != noisy))


@functools.cache
def image_splits(data: str, train_size: int) -> tuple[dict[str, torch.Tensor], ...]:
    """(train, val, test) tensors, read once per worker process: Fashion-MNIST (`train_size` training and 5k
    validation images from the 60k training set, seed 42; the official 10k test set), or MNIST-5k (2k/1k/2k)."""
    if data == "fmnist":
        return datasets.fashion_mnist_tensors(train_size)
    if data == "mnist":
        return datasets.mnist_5k_tensors()
    raise ValueError(f"image data must be one of {IMAGE_DATA}, got {data!r}")


@functools.cache
def text_splits(data: str) -> tuple[Any, dict[str, tuple[list[str], list[int]]]]:
    """(MiniLM's tokenizer, {split: (texts, labels)}), read once per worker process: Rotten Tomatoes with the text
    example's 80/10/10 split (seed 42), or the speaker-disjoint speeches."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    if data == "rt":
        splits = datasets.rotten_tomatoes_splits()
        names = {"train": "train", "val": "validation", "test": "test"}
        return tokenizer, {k: (list(splits[v]["text"]), list(splits[v]["label"])) for k, v in names.items()}
    if data == "speeches":
        return tokenizer, {k: (v["text"], v["label"]) for k, v in datasets.speeches_splits().items()}
    raise ValueError(f"text data must be one of {TEXT_DATA}, got {data!r}")


def text_rows(tokenizer: Any, texts: list[str], labels: list[int], sort: bool, max_length: int = 64) -> Rows:
    """Tokenised rows; `sort`: by length (evaluated in order, batches of similar lengths pad little)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    rows = [{**{k: v[i] for k, v in encoded.items()}, "labels": int(labels[i])} for i in range(len(labels))]
    if sort:
        rows.sort(key=lambda row: len(row["input_ids"]))
    return Rows(rows)
