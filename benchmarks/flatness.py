"""ERM vs AMP: how flat are the minima they find? (the paper's thesis, measured on our own runs)

PROTOCOL
- The image example's setting, trained twice with the same seed, data and budget: once with the plain Trainer (ERM),
  once with AMPTrainer (ε = 0.05 per tensor, ζ = 1, K = 1). The example's BatchNorm ResNet built from its config,
  Fashion-MNIST split as the example splits it (10% of the 60k training images held out for validation, seed 42),
  6,000 training images with random crops and flips, 512 validation and 512 test images; SGD momentum 0.9, lr 0.05,
  20 warm-up steps, batch 64, 3 epochs.
- On the same 4 validation batches of 128 images, each solution's top Hessian eigenvalue, its worst-case loss
  increase in an ε-ball of 0.05 (AMP's own objective), and its loss along a filter-normalised random direction.

    python -m benchmarks.flatness                 # ~3 minutes on 2 CPU cores
    python -m benchmarks.flatness --quick         # a smoke run in well under a minute
    python -m benchmarks.flatness --cached-only   # flatness.png from the measured flatness.json, training none

Writes benchmarks/results/flatness.json and flatness.png (quick: flatness_quick.*).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from amp_hf.sharpness import hessian_top_eigenvalue, loss_along_direction, worst_case_loss_increase

from .data import stack
from .reports import command, machine, pyplot, versions

ROOT = Path(__file__).resolve().parents[1]
ALPHAS = [round(-1.0 + 0.1 * i, 2) for i in range(21)]
MEASURE_EPSILON = 0.05
METHODS = {"ERM": {}, "AMP": {"amp_epsilon": MEASURE_EPSILON}}


def training_settings(seed: int, quick: bool) -> dict[str, Any]:
    """The AMPTrainingArguments of both runs (the example script's flags, as keywords)."""
    return {
        "num_train_epochs": 1 if quick else 3,
        "per_device_train_batch_size": 64,
        "per_device_eval_batch_size": 128,
        "optim": "sgd",
        "optim_args": "momentum=0.9",
        "learning_rate": 0.05,
        "warmup_steps": 20,
        "seed": seed,
        "eval_strategy": "no",
        "logging_steps": 20,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "log_level": "warning",
        "remove_unused_columns": False,  # the transform needs the raw image and label columns
    }


def train(name: str, seed: int, quick: bool, output_dir: Path):
    """Trains one solution as the image example does; returns the trainer and its test metrics."""
    from transformers import Trainer, set_seed

    from amp_hf import AMPTrainer, AMPTrainingArguments
    from amp_hf.tasks.data import fashion_mnist, holdout_splits, image_transform
    from amp_hf.tasks.models import image_classifier, image_processor

    set_seed(seed)  # before the model is built: its initialisation follows the seed
    data = holdout_splits(fashion_mnist(), validation_fraction=0.1, test_fraction=0.1)
    limits = {"train": 512 if quick else 6000, "validation": 512, "test": 512}
    for split, limit in limits.items():
        data[split] = data[split].select(range(min(limit, len(data[split]))))
    model, processor = image_classifier("resnet", num_labels=10, channels=1, image_size=28), image_processor(1)
    for split, ds in data.items():
        ds.set_transform(image_transform(processor, "image", "label", random_crops=split == "train"))
    args = AMPTrainingArguments(output_dir=str(output_dir), **training_settings(seed, quick), **METHODS[name])

    def accuracy(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}

    trainer = (Trainer if name == "ERM" else AMPTrainer)(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=processor,
        data_collator=stack,
        compute_metrics=accuracy,
    )
    trainer.train()
    return trainer, trainer.predict(data["test"], metric_key_prefix="test").metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    parser.add_argument("--cached-only", action="store_true", help="plot from the measured flatness.json")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    name = "flatness_quick" if cli.quick else "flatness"
    out = Path(cli.out)
    if cli.cached_only:
        plot(json.loads((out / f"{name}.json").read_text())["results"], out / f"{name}.png")
        print(f"wrote {out}/{name}.png from {name}.json")
        return
    eval_batches = 1 if cli.quick else 4
    results = {}
    for method in METHODS:
        start = time.perf_counter()
        trainer, test = train(method, cli.seed, cli.quick, ROOT / "outputs" / "flatness" / method)
        train_seconds = time.perf_counter() - start
        batches = list(itertools.islice(trainer.get_eval_dataloader(), eval_batches))
        model = trainer.model
        results[method] = {
            "settings": {**training_settings(cli.seed, cli.quick), **METHODS[method]},
            "test_accuracy": test["test_accuracy"],
            "test_loss": test["test_loss"],
            "train_seconds": round(train_seconds, 1),
            "hessian_top_eigenvalue": hessian_top_eigenvalue(model, batches, iters=20),
            "worst_case_loss_increase": worst_case_loss_increase(model, batches, epsilon=MEASURE_EPSILON),
            "landscape_alphas": ALPHAS,
            "landscape_losses": loss_along_direction(model, batches, alphas=ALPHAS, seed=cli.seed),
        }
        shown = {k: v for k, v in results[method].items() if not k.startswith(("land", "settings"))}
        print(f"{method}: " + json.dumps(shown))

    record = {
        "command": command("flatness"),
        "protocol": __doc__.split("PROTOCOL\n", 1)[1].split("\n\n", 1)[0],
        "versions": versions(),
        "machine": machine(),
        "measured_on": f"{eval_batches} validation batches of 128 images; worst case at epsilon={MEASURE_EPSILON}",
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    plot(results, out / f"{name}.png")
    print(f"wrote {out}/{name}.json and {name}.png")


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (name, r), color in zip(results.items(), ("tab:gray", "tab:blue")):
        label = (
            f"{name}: λ_max={r['hessian_top_eigenvalue']:.2f}, AMP gap={r['worst_case_loss_increase']:.3f}, "
            f"test acc={r['test_accuracy']:.3f}"
        )
        ax.plot(r["landscape_alphas"], r["landscape_losses"], marker="o", ms=3, color=color, label=label)
    ax.set_xlabel("α  (θ + α·d, d a filter-normalised random direction)")
    ax.set_ylabel("validation loss")
    ax.set_title("Loss around the ERM and AMP solutions (ResNet, Fashion-MNIST)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
