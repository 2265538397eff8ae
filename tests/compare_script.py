"""A tiny training script as users write them for amp_hf.compare: HfArgumentParser over its own arguments and
AMPTrainingArguments, an AMPTrainer on a small MLP and random data, a dict eval_dataset {"validation", "test"} and an
evaluation of the test split after training. Seconds per run. The tests steer it through its own flags and through
environment variables (which compare does not record as part of a run's command):

- COMPARE_SCRIPT_FAIL="<seed>/<amp_epsilon>": exit 1 (after printing a recognisable line) in that run only;
- COMPARE_SCRIPT_NO_SAVE_SEED=s: skip save_state / save_metrics when --seed is s (compare's recorder must cover it);
- COMPARE_SCRIPT_COUNTER=path: append "<amp settings> <seed>" to path at every start, to count the runs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import HfArgumentParser, set_seed

from amp_hf import AMPTrainer, AMPTrainingArguments


@dataclass
class ScriptArguments:
    train_size: int = field(default=64, metadata={"help": "training examples"})
    test_evaluation: bool = field(default=True, metadata={"help": "evaluate the test split after training"})


class Points(Dataset):
    """Points in 6-d whose class is decided by a fixed random linear map, 20% of the training labels flipped."""

    def __init__(self, n: int, seed: int, noisy: bool) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=generator)
        weights = torch.randn(6, 3, generator=torch.Generator().manual_seed(1234))
        self.y = (self.x @ weights).argmax(-1)
        if noisy:
            flip = torch.rand(n, generator=generator) < 0.2
            self.y[flip] = (self.y[flip] + 1) % 3

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def train(script: ScriptArguments, args: AMPTrainingArguments, save: bool = True) -> AMPTrainer:
    """One run into args.output_dir (data fixed; the seed sets the initial weights and the batch order)."""
    set_seed(args.seed)
    trainer = AMPTrainer(
        model=MLP(),
        args=args,
        train_dataset=Points(script.train_size, 0, noisy=True),
        eval_dataset={"validation": Points(48, 1, noisy=True), "test": Points(48, 2, noisy=False)},
        compute_metrics=accuracy,
    )
    result = trainer.train()
    if save:
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if script.test_evaluation:
        metrics = trainer.evaluate(Points(48, 2, noisy=False), metric_key_prefix="test")
        if save:
            trainer.save_metrics("test", metrics)
    return trainer


def main() -> None:
    script, args = HfArgumentParser((ScriptArguments, AMPTrainingArguments)).parse_args_into_dataclasses()
    counter = os.environ.get("COMPARE_SCRIPT_COUNTER")
    if counter:
        with open(counter, "a") as out:
            out.write(f"{args.amp_inner_steps}/{args.amp_epsilon}/{args.amp_norm} {args.seed}\n")
    if f"{args.seed}/{args.amp_epsilon}" == os.environ.get("COMPARE_SCRIPT_FAIL"):
        print(f"deliberate failure for seed {args.seed}", file=sys.stderr)
        sys.exit(1)
    save = str(args.seed) != os.environ.get("COMPARE_SCRIPT_NO_SAVE_SEED")
    train(script, args, save=save)
    Path(args.output_dir, "script_saved" if save else "script_did_not_save").touch()


if __name__ == "__main__":
    main()
