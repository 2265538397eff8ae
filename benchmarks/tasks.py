"""Tasks (a data set, its sizes, epochs and label noise) and model families (a model, its optimizer and batch size):
the records every study's runs are made of, and `build`, which turns one into a model and data for a run.

To add a task: one `Task` entry in TASKS (its `data` one of benchmarks.data's data sets, its `family` one of FAMILIES);
a new data set: a loader in amp_hf.tasks.data and a branch in benchmarks.data. See benchmarks/README.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from amp_hf.tasks.models import image_classifier, minilm_path

from .data import IMAGE_DATA, Rows, image_splits, noisy_rows, stack, text_rows, text_splits

NOISE_RATE = 0.2
"""Noisy tasks: this share of the training and validation labels is wrong (test labels stay clean)."""
QUICK_SIZES = {"train": 192, "val": 96, "test": 192, "text_train": 64, "text_eval": 32}
"""--quick (a smoke run of every code path): these sizes and one epoch."""


@dataclass(frozen=True)
class Family:
    """A model family: the model, its optimizer and batch size, shared by all of the family's tasks."""

    key: str  # recommended.json key
    title: str
    tuning_task: str
    batch_size: int
    optimizer: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    """amp_hf.tasks.models.image_classifier keywords; empty for the text family (the pretrained MiniLM-L6)."""
    trainer_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A data set with its sizes and budget, trained by one family."""

    title: str
    family: str  # a key of FAMILIES
    role: str  # "tuning", "tuning data", "held-out", "control", "frontier", "accuracy"
    data: str  # "fmnist", "mnist", "rt", "speeches"
    train_size: int
    val_size: int
    epochs: float
    noisy: bool = False
    test_size: int | None = None
    """None: the whole test split."""


@dataclass
class TaskData:
    model: torch.nn.Module
    train: torch.utils.data.Dataset
    validation: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]


VIT = {"model_type": "vit", "patch_size": 7, "vit_hidden_size": 96, "vit_num_layers": 4, "vit_num_heads": 3}
FAMILIES: dict[str, Family] = {
    "vit": Family(
        key="vit_from_scratch",
        title="ViT from scratch (patch 7, width 96, 4 layers, 3 heads), AdamW, no augmentation",
        tuning_task="vit_fmnist_noisy",
        batch_size=128,
        optimizer={"optim": "adamw_torch", "learning_rate": 1e-3, "weight_decay": 0.05},
        model=VIT,
    ),
    "text": Family(
        key="text_finetune",
        title="MiniLM-L6 (pretrained) fine-tuning, AdamW, max_length 64",
        tuning_task="text_rt_noisy",
        batch_size=32,
        optimizer={"optim": "adamw_torch", "learning_rate": 2e-4, "weight_decay": 0.01},
        trainer_args={"train_sampling_strategy": "group_by_length"},  # batches of similar lengths: half the padding
    ),
    "cnn": Family(
        key="cnn",
        title="BatchNorm ResNet from scratch, SGD momentum 0.9",
        tuning_task="",
        batch_size=128,
        optimizer={"optim": "sgd", "optim_args": "momentum=0.9", "learning_rate": 0.05, "weight_decay": 5e-4},
        model={"model_type": "resnet"},
    ),
}

VIT_EPOCHS, TEXT_EPOCHS, CNN_EPOCHS = 30, 4, 15
TASKS: dict[str, Task] = {
    # The transfer study (benchmarks/transfer.py).
    "vit_fmnist_noisy": Task("Fashion-MNIST 2k, 20% noise", "vit", "tuning", "fmnist", 2000, 2000, VIT_EPOCHS, True),
    "vit_fmnist": Task("Fashion-MNIST 2k", "vit", "tuning data", "fmnist", 2000, 2000, VIT_EPOCHS),
    "vit_mnist": Task("MNIST 2k", "vit", "held-out", "mnist", 2000, 1000, VIT_EPOCHS),
    "vit_mnist_noisy": Task("MNIST 2k, 20% noise", "vit", "held-out", "mnist", 2000, 1000, VIT_EPOCHS, True),
    "vit_mnist_small": Task("MNIST 500", "vit", "held-out", "mnist", 500, 1000, 3 * VIT_EPOCHS),
    "text_rt_noisy": Task("Rotten Tomatoes 800, 20% noise", "text", "tuning", "rt", 800, 1000, TEXT_EPOCHS, True),
    "text_rt": Task("Rotten Tomatoes 800", "text", "tuning data", "rt", 800, 1000, TEXT_EPOCHS),
    "text_speeches": Task("speeches 800", "text", "held-out", "speeches", 800, 1000, TEXT_EPOCHS, test_size=2000),
    "text_speeches_noisy": Task(
        "speeches 800, 20% noise", "text", "held-out", "speeches", 800, 1000, TEXT_EPOCHS, True, 2000
    ),
    "text_speeches_small": Task(
        "speeches 200", "text", "held-out", "speeches", 200, 1000, 3 * TEXT_EPOCHS, test_size=2000
    ),
    "cnn_fmnist_noisy": Task("Fashion-MNIST 5k, 20% noise", "cnn", "control", "fmnist", 5000, 2000, CNN_EPOCHS, True),
    # The long-training regime of the cheap-AMP frontier (benchmarks/frontier.py): ERM memorises the noise.
    "cnn_mnist_noisy_long": Task("MNIST 2k, 20% noise, long", "cnn", "frontier", "mnist", 2000, 1000, 60, True),
    "cnn_fmnist_noisy_long": Task(
        "Fashion-MNIST 5k, 20% noise, long", "cnn", "frontier", "fmnist", 5000, 2000, 40, True
    ),
    # The November 2026 accuracy study (benchmarks/accuracy.py): clean labels, 5k validation images.
    "acc_cnn": Task(
        "BatchNorm ResNet, 5k Fashion-MNIST images, from scratch, SGD", "cnn", "accuracy", "fmnist", 5000, 5000, 15
    ),
    # 2k images for 40 epochs: ERM fits its training set (loss ~0.03 at the end).
    "acc_vit": Task(
        "ViT (patch 7, width 96, 4 layers), 2k Fashion-MNIST images, from scratch, AdamW",
        "vit",
        "accuracy",
        "fmnist",
        2000,
        5000,
        40,
    ),
    "acc_text": Task(
        "MiniLM-L6 (pretrained) fine-tuned on 800 Rotten Tomatoes snippets, AdamW",
        "text",
        "accuracy",
        "rt",
        800,
        1000,
        3,
    ),
}


def build(task_name: str, quick: bool, seed: int) -> tuple[TaskData, dict[str, Any]]:
    """Model and data of a task for a run of this seed (label noise drawn from the seed); plus facts about the data
    (sizes, realised noise, class shares). Call after seeding: the model's initialisation follows the seed."""
    task, family = TASKS[task_name], FAMILIES[TASKS[task_name].family]
    text = task.data not in IMAGE_DATA
    n_train = QUICK_SIZES["text_train" if text else "train"] if quick else task.train_size
    n_val = QUICK_SIZES["text_eval" if text else "val"] if quick else task.val_size
    n_test = QUICK_SIZES["text_eval" if text else "test"] if quick else task.test_size
    if not text:
        cut = lambda rows, n: {k: v[:n] for k, v in rows.items()}  # noqa: E731
        train, val, test = image_splits(task.data, task.train_size)
        train, val, test = cut(train, n_train), cut(val, n_val), cut(test, n_test)
        model = image_classifier(num_labels=10, channels=1, image_size=28, **family.model)
        data = TaskData(model, Rows(train), Rows(val), Rows(test), stack)
        classes = 10
    else:
        from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

        tokenizer, splits = text_splits(task.data)

        def part(name: str, n: int | None, sort: bool) -> Rows:
            texts, labels = splits[name]
            return text_rows(tokenizer, texts[:n], labels[:n], sort)

        model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        data = TaskData(
            model,
            part("train", n_train, False),
            part("val", n_val, True),
            part("test", n_test, True),
            DataCollatorWithPadding(tokenizer),
        )
        classes = 2
    facts: dict[str, Any] = {"sizes": [len(data.train), len(data.validation), len(data.test)]}
    if task.noisy:
        data.train, facts["train_noise"] = noisy_rows(data.train, classes, NOISE_RATE, seed, "train")
        data.validation, facts["val_noise"] = noisy_rows(data.validation, classes, NOISE_RATE, seed, "validation")
    if classes == 2:
        share = lambda rows: round(statistics.mean(int(rows[i]["labels"]) for i in range(len(rows))), 4)  # noqa: E731
        facts["positive_share"] = [share(data.train), share(data.validation), share(data.test)]
    return data, facts
