"""The README's main job: a short AMP fine-tune of each example on its offline default model and data.

Runs in a few minutes on 2 CPU cores and prints the test metrics of each run. The full runs are the same scripts
without the size flags (see README).
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import image_classification
import text_classification

OUT = os.environ.get("AMP_DEMO_OUTPUT", "outputs/demo")
COMMON = [
    "--use_cpu",
    "--report_to",
    "none",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
    "--log_level",
    "warning",
]

VISION = (
    "--max_train_samples 6000 --max_eval_samples 2000 --num_train_epochs 2 --per_device_train_batch_size 64 "
    "--optim sgd --optim_args momentum=0.9 --learning_rate 0.05 --warmup_steps 20 --eval_strategy no --logging_steps 20"
)
# No --amp_* flag: each script applies the transfer study's recommendation for its family
# (benchmarks/results/recommended.json; README "Choosing ε"), as a user running the examples gets it.
RUNS = {
    "text: MiniLM-L6 fine-tuned on Rotten Tomatoes": (
        text_classification.main,
        f"--output_dir {OUT}/text --max_train_samples 1600 --max_eval_samples 500 --num_train_epochs 1 "
        "--per_device_train_batch_size 32 --learning_rate 2e-4 --eval_strategy no --logging_steps 10",
    ),
    "vision: BatchNorm ResNet from scratch on Fashion-MNIST": (
        image_classification.main,
        f"--output_dir {OUT}/vision --model_type resnet {VISION}",
    ),
    # The same run with the regime preset for long training on noisy labels (AMP, ascent on an eighth of each
    # micro-batch): it shows AMP's step and metrics; at 2 clean epochs there is nothing for it to regularise.
    "vision, AMP preset cnn_long_noisy (for long noisy training)": (
        image_classification.main,
        f"--output_dir {OUT}/vision_amp --model_type resnet {VISION} --amp_preset cnn_long_noisy",
    ),
}


def main() -> None:
    results = {}
    for name, (script, flags) in RUNS.items():
        argv = flags.split() + COMMON
        print(f"\n=== {name}\n    {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        trainer, test = script(argv)
        amp_logs = [e for e in trainer.state.log_history if "amp_loss" in e]
        config = getattr(trainer, "amp_config", None)
        results[name] = {
            "amp": "off (ERM)" if config is None or not config.enabled else repr(config),
            "amp_start_step": trainer.args.amp_start_step,
            "test_accuracy": round(test["test_accuracy"], 4),
            "test_f1": round(test["test_f1"], 4),
            "train_steps": trainer.state.global_step,
            "last_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
            "last_amp_loss": amp_logs[-1]["amp_loss"] if amp_logs else None,
            "last_amp_delta_norm": round(amp_logs[-1]["amp_delta_norm"], 4) if amp_logs else None,
            "wall_seconds": round(time.perf_counter() - start, 1),
        }
    print("\n=== amp_hf demo results (test split; run the scripts with --erm for the plain Trainer)")
    for name, row in results.items():
        print(f"{name:56s} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "demo_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"saved {OUT}/demo_results.json")


if __name__ == "__main__":
    main()
