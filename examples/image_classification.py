"""Train an image classifier from random initialisation with AMP or ERM: a vision transformer, or a small BatchNorm
ResNet like the paper's CNNs (AMP = Adversarial Model Perturbation, a regulariser; not mixed precision).

Defaults, offline: Fashion-MNIST (Debian package `dataset-fashion-mnist`: 60k training images, of which 10% are held
out for validation with a fixed seed, and the official 10k test images), a ViT built from its config, random crops
(2-pixel padding) and horizontal flips.

    python examples/image_classification.py --output_dir out/vit --num_train_epochs 1
    python examples/image_classification.py --output_dir out/cnn --model_type resnet --optim sgd \
        --optim_args momentum=0.9 --learning_rate 0.05 --num_train_epochs 40 \
        --amp_preset cnn_long_noisy  # for a CNN trained until ERM memorises noisy labels (your data: --train_file;
                                     # the default data has no wrong labels; examples/demo_train.py adds them)
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

import os
import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from amp_hf import close_process_group
from amp_hf.tasks.data import (  # the data set lives in the library's support code; its names stay importable here
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    as_array,
    augment,
    fashion_mnist,
    image_transform,
    read_idx,
)
from amp_hf.tasks.models import image_classifier, image_processor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    DataArguments,
    accuracy_f1,
    encode_labels,
    from_pretrained,
    load_data,
    parse_args,
    run,
)

__all__ = [  # what the demo, the tests and user scripts import from this script
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "ImageArguments",
    "as_array",
    "augment",
    "build_model",
    "fashion_mnist",
    "main",
    "read_idx",
]


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
    processor = image_processor(channels)
    model = image_classifier(
        args.model_type,
        num_labels,
        channels,
        image_size,
        patch_size=args.patch_size,
        vit_hidden_size=args.vit_hidden_size,
        vit_num_layers=args.vit_num_layers,
        vit_num_heads=args.vit_num_heads,
    )
    return model, processor


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

    for split, ds in data.items():
        random_crops = split == "train" and args.augment
        ds.set_transform(image_transform(processor, args.image_column, args.label_column, random_crops))

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
