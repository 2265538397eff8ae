"""Fine-tune a text classifier in a plain Accelerate loop (no Trainer), with AMP (Adversarial Model Perturbation).

The loop is written the way the Hugging Face `*_no_trainer.py` examples write theirs (argparse, `accelerator.prepare`,
`accelerator.accumulate`, `accelerator.backward`, an lr scheduler); AMP adds the lines marked `# AMP`
(docs/custom-loops.md shows them as a diff against the same loop without AMP). Defaults, offline: the pretrained
all-MiniLM-L6-v2 on Rotten Tomatoes snippets (as examples/text_classification.py), 90/10 train/validation split.

    python examples/text_classification_no_trainer.py --output_dir out/nt --amp_epsilon 0.05 --amp_norm global
    accelerate launch --config_file examples/accelerate/ddp_cpu.yaml examples/text_classification_no_trainer.py \
        --cpu --output_dir out/nt                    # 2 CPU processes (DDP over gloo); without --cpu: the GPUs
    python examples/text_classification_no_trainer.py --output_dir out/nt --amp_inner_steps 0   # plain ERM
    python examples/text_classification_no_trainer.py --output_dir out/nt --train_file train.csv \\
        --validation_file val.csv --text_column sentence --label_column label --model_name_or_path bert-base-uncased
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import ClassLabel, DatasetDict, load_dataset
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

from amp_hf import AMP, add_amp_arguments, close_process_group  # AMP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_classification import default_model_path, rotten_tomatoes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=None, help="Local folder or Hub name. Default: MiniLM-L6.")
    parser.add_argument("--train_file", default=None, help="csv or json(l) training data. Default: Rotten Tomatoes.")
    parser.add_argument("--validation_file", default=None, help="csv or json(l) validation data.")
    parser.add_argument("--text_column", default="text")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--max_length", type=int, default=64, help="Tokens per example; longer texts are cut.")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--per_device_train_batch_size", type=int, default=16)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--lr_scheduler_type", default="linear")
    parser.add_argument("--num_warmup_steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", default=None, help="Where all_results.json is written.")
    parser.add_argument("--cpu", action="store_true", help="Run on CPU even when a GPU is present.")
    add_amp_arguments(parser)  # AMP
    args = parser.parse_args(argv)
    if (args.train_file is None) != (args.validation_file is None):
        parser.error("--train_file and --validation_file go together")
    return args


def load_splits(args: argparse.Namespace) -> DatasetDict:
    """train / validation with integer labels: the user's files, or Rotten Tomatoes split 90/10."""
    if args.train_file:
        extension = args.train_file.rsplit(".", 1)[-1].replace("jsonl", "json")
        data = load_dataset(extension, data_files={"train": args.train_file, "validation": args.validation_file})
        if not isinstance(data["train"].features[args.label_column], ClassLabel):
            data = data.class_encode_column(args.label_column)
    else:
        data = rotten_tomatoes().train_test_split(test_size=0.1, seed=0)
        data = DatasetDict(train=data["train"], validation=data["test"])
    for split, limit in (("train", args.max_train_samples), ("validation", args.max_eval_samples)):
        if limit is not None:
            data[split] = data[split].select(range(min(limit, len(data[split]))))
    return data


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    accelerator = Accelerator(cpu=args.cpu, gradient_accumulation_steps=args.gradient_accumulation_steps)
    set_seed(args.seed)

    data = load_splits(args)
    num_labels = data["train"].features[args.label_column].num_classes
    model_path = args.model_name_or_path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)

    def tokenize(batch):
        encoded = tokenizer(batch[args.text_column], truncation=True, max_length=args.max_length)
        encoded["labels"] = batch[args.label_column]
        return encoded

    with accelerator.main_process_first():
        data = data.map(tokenize, batched=True, remove_columns=data["train"].column_names)
    pad = DataCollatorWithPadding(tokenizer)
    train_loader = DataLoader(data["train"], shuffle=True, batch_size=args.per_device_train_batch_size, collate_fn=pad)
    eval_loader = DataLoader(data["validation"], batch_size=args.per_device_eval_batch_size, collate_fn=pad)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    epochs = math.ceil(max_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, eval_loader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, lr_scheduler
    )
    amp = AMP.from_args(model, args, accelerator=accelerator)  # AMP

    step, loss_sum, micro_batches = 0, torch.zeros((), device=accelerator.device), 0
    for _ in range(epochs):
        model.train()
        for batch in train_loader:
            with accelerator.accumulate(model), amp.perturbed(batch):  # AMP: was `with accelerator.accumulate(model):`
                outputs = model(**batch)
                loss = outputs.loss
                loss_sum += loss.detach().float()
                micro_batches += 1
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                step += 1
            if step >= max_steps:
                break
        if step >= max_steps:
            break

    model.eval()
    correct, seen = 0, 0
    for batch in eval_loader:
        with torch.no_grad():
            predictions = model(**batch).logits.argmax(dim=-1)
        predictions, labels = accelerator.gather_for_metrics((predictions, batch["labels"]))
        correct += int((predictions == labels).sum())
        seen += len(labels)

    train_loss = accelerator.reduce(loss_sum, reduction="mean").item() / max(1, micro_batches)
    # train_loss is the loss the loop computed: at θ + Δ on AMP steps (amp_clean_loss is the loss at θ)
    results = {"eval_accuracy": correct / max(1, seen), "train_loss": train_loss, "train_steps": step}
    results.update(amp.metrics())  # AMP: amp_clean_loss, amp_delta_norm, amp_skipped, amp_steps
    accelerator.print(f"RESULT {json.dumps(results)}")
    if args.output_dir and accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
            json.dump(results, f, indent=2)
    accelerator.wait_for_everyone()
    return results


if __name__ == "__main__":
    main()
    close_process_group()  # torchrun / accelerate launch on CPU: see amp_hf/process_group.py
