"""ERM vs AMP: how flat are the minima they find? (the paper's thesis, measured on our own runs)

Trains the example's BatchNorm ResNet on a Fashion-MNIST subset twice, with the same seed, data and budget: once with
the plain Trainer (ERM), once with AMPTrainer. Then, on the same validation batches, measures each solution's top
Hessian eigenvalue, its worst-case loss increase in an ε-ball (AMP's own objective), and its loss along a
filter-normalised random direction. Writes benchmarks/results/flatness.json and flatness.png.

    python benchmarks/flatness.py            # ~3 minutes on 2 CPU cores
    python benchmarks/flatness.py --quick    # a smoke run in well under a minute
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import accelerate  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from image_classification import main as train_image_classifier  # noqa: E402

from amp_hf.sharpness import hessian_top_eigenvalue, loss_along_direction, worst_case_loss_increase  # noqa: E402

ALPHAS = [round(-1.0 + 0.1 * i, 2) for i in range(21)]
MEASURE_EPSILON = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    samples, epochs, eval_batches = ("512", "1", 1) if cli.quick else ("6000", "3", 4)
    common = (
        f"--model_type resnet --max_train_samples {samples} --max_eval_samples 512 --num_train_epochs {epochs} "
        "--per_device_train_batch_size 64 --per_device_eval_batch_size 128 --optim sgd --optim_args momentum=0.9 "
        f"--learning_rate 0.05 --warmup_steps 20 --seed {cli.seed} --eval_strategy no --logging_steps 20 "
        "--use_cpu --report_to none --save_strategy no --disable_tqdm true --log_level warning"
    ).split()
    runs = {"ERM": ["--erm"], "AMP": ["--amp_epsilon", "0.05"]}

    results = {}
    for name, extra in runs.items():
        start = time.perf_counter()
        argv = ["--output_dir", str(ROOT / "outputs" / "flatness" / name), *common, *extra]
        trainer, test = train_image_classifier(argv)
        train_seconds = time.perf_counter() - start
        batches = list(itertools.islice(trainer.get_eval_dataloader(), eval_batches))
        model = trainer.model
        results[name] = {
            "argv": argv,
            "test_accuracy": test["test_accuracy"],
            "test_loss": test["test_loss"],
            "train_seconds": round(train_seconds, 1),
            "hessian_top_eigenvalue": hessian_top_eigenvalue(model, batches, iters=20),
            "worst_case_loss_increase": worst_case_loss_increase(model, batches, epsilon=MEASURE_EPSILON),
            "landscape_alphas": ALPHAS,
            "landscape_losses": loss_along_direction(model, batches, alphas=ALPHAS, seed=cli.seed),
        }
        print(f"{name}: " + json.dumps({k: v for k, v in results[name].items() if not k.startswith(("land", "argv"))}))

    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
            "python": platform.python_version(),
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "measured_on": f"{eval_batches} validation batches of 128 images; worst case at epsilon={MEASURE_EPSILON}",
        "results": results,
    }
    name = "flatness_quick" if cli.quick else "flatness"
    Path(cli.out).mkdir(parents=True, exist_ok=True)
    (Path(cli.out) / f"{name}.json").write_text(json.dumps(record, indent=2))
    plot(results, Path(cli.out) / f"{name}.png")
    print(f"wrote {cli.out}/{name}.json and {name}.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
