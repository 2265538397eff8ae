"""Checks that need an accelerator, in one short script (for a session that is lent a GPU; CPU runs the fp32 parts).

1. fp16 through accelerate's own GradScaler: AMP trains a tiny BERT with finite losses, logs its keys, and gives the
   same first-step Δ norm as an fp32 run (the ascent is unscaled); the scaler's state is reported.
2. bf16 autocast: the same, with bf16.
3. DeepSpeed ZeRO-2 and ZeRO-3 with an fp16 engine (DeepSpeed refuses fp16 on CPU): AMP trains with finite losses
   and the same first-step Δ norm as an fp32 engine (the ascent divides out the engine's loss scale).
4. Cost on the device: step time AMP K=1 vs ERM (interleaved, medians of round ratios) and extra peak memory
   (`torch.cuda.max_memory_allocated`) in units of parameter bytes, on a BERT-base-sized model built from a config.

    python -m benchmarks.device_check            # prints one JSON line per check; exit code 1 if a check fails
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer

from amp_hf import AMPTrainer, AMPTrainingArguments

from .steps import make_trainer, optimizer_step, parameter_bytes

CUDA = torch.cuda.is_available()
failures: list[str] = []


def report(name: str, ok: bool | None, **values) -> None:
    """ok None: not run here (printed as such, never counted as passed)."""
    print(json.dumps({"check": name, "ok": ok, **values}), flush=True)
    if ok is False:
        failures.append(name)


def bert(hidden: int = 32, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 16,
        intermediate_size=4 * hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def data(n: int = 64, length: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (n, length), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})


def train(precision: dict, steps: int = 4) -> AMPTrainer:
    args = AMPTrainingArguments(
        tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=8, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, learning_rate=1e-4, amp_epsilon=0.05, use_cpu=not CUDA, **precision,
    )  # fmt: skip
    trainer = AMPTrainer(model=bert(), args=args, train_dataset=data())
    trainer.train()
    return trainer


def precision_checks() -> None:
    reference = train({})
    first = reference.state.log_history[0]
    for name, precision in (("fp16", {"fp16": True}), ("bf16", {"bf16": True})):
        if name == "fp16" and not CUDA:
            report("fp16", None, not_run="no CUDA device: accelerate makes no GradScaler on CPU")
            continue
        trainer = train(precision)
        logs = [e for e in trainer.state.log_history if "amp_clean_loss" in e]
        scaler = getattr(trainer.accelerator, "scaler", None)
        delta = logs[0]["amp_delta_norm"] if logs else float("nan")
        ok = (
            len(logs) == 4
            and all(torch.isfinite(torch.tensor([e["loss"], e["amp_clean_loss"]])).all() for e in logs)
            and abs(delta - first["amp_delta_norm"]) <= 0.05 * first["amp_delta_norm"]  # ascent not scaled
            and (name != "fp16" or scaler is not None)
        )
        report(name, ok, first_delta_norm=delta, fp32_first_delta_norm=first["amp_delta_norm"],
               skipped=[e["amp_skipped"] for e in logs], scale=scaler.get_scale() if scaler else None)  # fmt: skip


def deepspeed_fp16_check() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        report("deepspeed_fp16", None, not_run='deepspeed is not installed (pip install "amp-hf[deepspeed]")')
        return
    if not CUDA:
        report("deepspeed_fp16", None, not_run="no CUDA device: DeepSpeed refuses fp16 on CPU")
        return
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", "29531")
    for stage in (2, 3):
        zero = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": {"stage": stage},
                "fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}}  # fmt: skip
        runs = {
            name: train({"deepspeed": zero, **precision})
            for name, precision in (("fp32", {}), ("fp16", {"fp16": True}))
        }
        logs = {name: [e for e in t.state.log_history if "amp_clean_loss" in e] for name, t in runs.items()}
        engine = runs["fp16"].model_wrapped
        delta, reference = logs["fp16"][0]["amp_delta_norm"], logs["fp32"][0]["amp_delta_norm"]
        ok = (
            type(engine).__name__ == "DeepSpeedEngine"
            and engine.fp16_enabled()
            and len(logs["fp16"]) == 4
            and all(torch.isfinite(torch.tensor([e["loss"], e["amp_clean_loss"]])).all() for e in logs["fp16"])
            and abs(delta - reference) <= 0.05 * reference
        )
        report(f"deepspeed_zero{stage}_fp16", ok, first_delta_norm=delta, fp32_first_delta_norm=reference,
               skipped=[e["amp_skipped"] for e in logs["fp16"]], scale=float(engine.optimizer.cur_scale))  # fmt: skip


def cost_check(rounds: int = 10) -> None:
    device = torch.device("cuda" if CUDA else "cpu")
    batch = {k: torch.tensor(v).to(device) for k, v in data(32, 128)[:32].items()}
    results = {}
    for name, cls in (("ERM", Trainer), ("AMP", AMPTrainer)):
        model = bert(768, 12 if CUDA else 2).to(device)
        results[name] = (make_trainer(cls, model, use_cpu=not CUDA), model)
    param_bytes = parameter_bytes(results["ERM"][1])

    def step(name: str) -> float:
        trainer, model = results[name]
        if CUDA:
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.training_step(model, dict(batch))
        optimizer_step(trainer)
        if CUDA:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    peaks = {}
    for name in results:  # warm-up, and the peak memory of one step each
        step(name)
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(name)
            peaks[name] = torch.cuda.max_memory_allocated() - base
    ratios = [step("AMP") / step("ERM") for _ in range(rounds)]
    extra = (peaks["AMP"] - peaks["ERM"]) / param_bytes if CUDA else None
    report("cost", True, device=str(device), amp_vs_erm_step=round(statistics.median(ratios), 3),
           extra_peak_memory_in_param_bytes=None if extra is None else round(extra, 3))  # fmt: skip


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options; --help says what it does
    print(json.dumps({"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__}))
    precision_checks()
    deepspeed_fp16_check()
    cost_check()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
