"""Train an image classifier from random initialisation with AMP or ERM: a vision transformer, or a small BatchNorm
ResNet like the paper's CNNs (AMP = Adversarial Model Perturbation, a regulariser; not mixed precision).

Defaults, offline: Fashion-MNIST (Debian package `dataset-fashion-mnist`: 60k training images, of which 10% are held
out for validation with a fixed seed, and the official 10k test images), a ViT built from its config, random crops
(2-pixel padding) and horizontal flips.

    python examples/image_classification.py --output_dir out/vit --num_train_epochs 1
    python examples/image_classification.py --output_dir out/cnn --model_type resnet --optim sgd \
        --optim_args momentum=0.9 --learning_rate 0.05 --num_train_epochs 40 \
        --amp_preset cnn_long_noisy  # for a CNN trained until ERM memorises noisy labels (your data: --train_file;
                                     # the default data has no wrong labels; examples/demo.py adds them)
    python examples/image_classification.py --output_dir out/cnn --model_type resnet --optim sgd \
        --learning_rate 0.1 --num_train_epochs 200 --amp_preset reference   # the paper's regime and settings
    python examples/image_classification.py --output_dir out/vit --amp_norm elementwise --amp_inner_lr 100 \
        --amp_epsilon 0.5           # ViT with AdamW: the ASAM ball, a candidate to check against ERM
    (without --amp_preset or --amp_* flags: the library preset for the model family, plain ERM today: vit_from_scratch,
    cnn, or finetune for a --model_name_or_path; README "Should I use AMP?")
    python examples/image_classification.py --output_dir out/vit --erm            # the same run with plain ERM
    torchrun --nproc_per_node 2 examples/image_classification.py --output_dir out/vit --use_cpu   # two processes
"""

from __future__ import annotations

import gzip
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Array2D, ClassLabel, Dataset, DatasetDict, Features
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from amp_hf import close_process_group

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    DataArguments,
    accuracy_f1,
    encode_labels,
    from_pretrained,
    load_data,
    missing_asset,
    parse_args,
    run,
)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


@dataclass
class ImageArguments(DataArguments):
    image_column: str = field(default="image", metadata={"help": "The column holding the image (or its file path)."})
    model_type: str = field(
        default="vit",
        metadata={
            "help": "Architecture built from its config when --model_name_or_path is not given: 'vit' (a vision "
            "transformer) or 'resnet' (a small ResNet with BatchNorm, as the AMP paper's CNNs).",
            "choices": ["vit", "resnet"],
        },
    )
    patch_size: int = field(default=4, metadata={"help": "ViT patch size (pixels)."})
    vit_hidden_size: int = field(default=192, metadata={"help": "ViT width."})
    vit_num_layers: int = field(default=6, metadata={"help": "ViT depth."})
    vit_num_heads: int = field(default=3, metadata={"help": "ViT attention heads."})
    augment: bool = field(default=True, metadata={"help": "Random 2-pixel-padded crops and horizontal flips."})


# ------------------------------------------------------------------------------------------------------ data
def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian int32 dimensions after a 4-byte magic number, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist() -> DatasetDict:
    if not os.path.isdir(FASHION_MNIST_DIR):
        what = f"The default data set (Fashion-MNIST, expected in {FASHION_MNIST_DIR})"
        raise missing_asset(what, "apt-get install dataset-fashion-mnist  (Debian)")
    features = Features(
        {"image": Array2D(shape=(28, 28), dtype="uint8"), "label": ClassLabel(names=FASHION_MNIST_CLASSES)}
    )
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
        splits[split] = Dataset.from_dict({"image": images, "label": labels}, features=features)
    return DatasetDict(splits)


def as_array(image) -> np.ndarray:
    """HWC uint8 from a PIL image, an array, or nested lists; grayscale gets a channel axis."""
    array = np.asarray(image.convert("RGB") if getattr(image, "mode", "L") not in ("L", "RGB") else image)
    return array[..., None] if array.ndim == 2 else array


def augment(array: np.ndarray, pad: int = 2) -> np.ndarray:
    """A random crop of the image padded by `pad` pixels, then a horizontal flip half of the time (torch's RNG)."""
    h, w = array.shape[:2]
    padded = np.pad(array, ((pad, pad), (pad, pad), (0, 0)))
    top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    crop = padded[top : top + h, left : left + w]
    return crop[:, ::-1] if torch.rand(()) < 0.5 else crop


# ----------------------------------------------------------------------------------------------------- model
def build_model(args: ImageArguments, num_labels: int, channels: int, image_size: int):
    if args.model_name_or_path:
        model = from_pretrained(
            AutoModelForImageClassification,
            args.model_name_or_path,
            num_labels=num_labels,
            ignore_mismatched_sizes=True,
        )
        return model, from_pretrained(AutoImageProcessor, args.model_name_or_path)
    mean, std = (FASHION_MNIST_MEAN, FASHION_MNIST_STD) if channels == 1 else (0.5, 0.5)
    processor = ViTImageProcessorPil(
        do_resize=False, do_rescale=True, do_normalize=True, image_mean=[mean] * channels, image_std=[std] * channels
    )
    if args.model_type == "resnet":
        config = ResNetConfig(
            num_channels=channels,
            embedding_size=32,
            hidden_sizes=[32, 64, 128],
            depths=[1, 1, 1],
            layer_type="basic",
            num_labels=num_labels,
        )
        return ResNetForImageClassification(config), processor
    config = ViTConfig(
        image_size=image_size,
        patch_size=args.patch_size,
        num_channels=channels,
        hidden_size=args.vit_hidden_size,
        num_hidden_layers=args.vit_num_layers,
        num_attention_heads=args.vit_num_heads,
        intermediate_size=2 * args.vit_hidden_size,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config), processor


def family_preset(args: ImageArguments) -> str:
    """The amp_hf preset for this model family when no --amp_* flag is given: a pretrained model is fine-tuned
    ('finetune', plain ERM: AMP's reference defaults collapse fine-tuning), else the study's family entry."""
    if args.model_name_or_path:
        return "finetune"
    return "cnn" if args.model_type == "resnet" else "vit_from_scratch"


def main(argv: list[str] | None = None):
    args, training_args = parse_args(ImageArguments, argv, preset_for=family_preset)
    training_args.remove_unused_columns = False  # the transform below needs the raw image and label columns
    columns = [args.image_column, args.label_column]
    data = load_data(args, fashion_mnist, columns, "Name them with --image_column and --label_column.")
    labels = encode_labels(data, args.label_column)
    first = as_array(data["train"][0][args.image_column])
    model, processor = build_model(args, len(labels), channels=first.shape[-1], image_size=first.shape[0])

    def transform(train: bool):
        def apply(batch):
            arrays = [as_array(image) for image in batch[args.image_column]]
            if train and args.augment:
                arrays = [augment(a) for a in arrays]
            pixels = processor(images=arrays, return_tensors="pt", input_data_format="channels_last")
            return {"pixel_values": pixels["pixel_values"], "labels": torch.tensor(batch[args.label_column])}

        return apply

    for split, ds in data.items():
        ds.set_transform(transform(train=split == "train"))

    return run(
        args,
        training_args,
        data,
        model=model,
        processing_class=processor,
        data_collator=lambda rows: {k: torch.stack([row[k] for row in rows]) for k in rows[0]},
        compute_metrics=accuracy_f1(len(labels)),
    )


if __name__ == "__main__":
    main()
    close_process_group()  # torchrun / accelerate launch on CPU: see amp_hf/process_group.py
