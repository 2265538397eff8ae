"""What does AMP cost? Step time and peak memory of AMPTrainer against the plain Trainer, measured side by side.

For each model, one process times, **interleaved** round by round (these machines are noisy), one optimizer step of:
ERM (the plain Trainer), AMP with K = 1 and K = 2, AMP with K = 1 applied every 2nd and 4th step, and the
momentum direction (`amp_direction='momentum'`, no ascent pass; its optimizer state exists from the warm-up step on).
Each step is what the Trainer's loop does: `training_step`, gradient clipping, `optimizer.step()`, `zero_grad()`.
From the same run it times the parts — one forward/backward pass (`Trainer.training_step`) and one optimizer step —
and so the ideal cost of each setting: (passes per step) × forward/backward + optimizer step. Reported: median step
times, and the medians of the round-by-round ratios to ERM, to the ideal and (when timed) to full AMP (K = 1).

Peak memory is measured in fresh processes (the peak RSS of a process cannot be reset): ERM against AMP, after the
same steps, as extra bytes in units of the model's parameter bytes.

    python -m benchmarks.cost             # tiny BERT, MiniLM-L6, the example ViT (~10 minutes on 2 CPU cores)
    python -m benchmarks.cost --quick     # tiny BERT only, a few rounds
    python -m benchmarks.cost --profile   # where AMP's step time and memory go, by torch.profiler (~3 minutes)
    python -m benchmarks.cost --only "AMP K=1" "AMP momentum" --rounds 30   # the momentum direction against ERM
                                          # and full AMP, with its tensor peak (cost_selected.json)

Measurements, not cached runs: each invocation measures again and writes benchmarks/results/cost.json
(cost_selected.json with --only, cost_profile.json with --profile); docs/cost.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import transformers
from transformers import Trainer

from amp_hf import AMPTrainer, perturbed_weights
from amp_hf.first_moment import first_moments
from amp_hf.perturbation import momentum_perturbed_weights

from .methods import passes_per_step
from .reports import command
from .steps import make_trainer, optimizer_step, parameter_bytes, tensor_peak_bytes, timed, train_step

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = {  # name: (trainer class, amp arguments)
    "ERM": (Trainer, {}),
    "AMP K=1": (AMPTrainer, {"amp_inner_steps": 1}),
    "AMP K=2": (AMPTrainer, {"amp_inner_steps": 2}),
    "AMP K=1 every 2": (AMPTrainer, {"amp_inner_steps": 1, "amp_interval": 2}),
    "AMP K=1 every 4": (AMPTrainer, {"amp_inner_steps": 1, "amp_interval": 4}),
    # the ascent on the head of each micro-batch (amp_ascent_fraction f): ideally 1 + f passes per step
    "AMP K=1 f=0.5": (AMPTrainer, {"amp_inner_steps": 1, "amp_ascent_fraction": 0.5}),
    "AMP K=1 f=0.25": (AMPTrainer, {"amp_inner_steps": 1, "amp_ascent_fraction": 0.25}),
    "AMP K=1 f=0.125": (AMPTrainer, {"amp_inner_steps": 1, "amp_ascent_fraction": 0.125}),
    "AMP K=1 f=0.25 every 2": (AMPTrainer, {"amp_inner_steps": 1, "amp_ascent_fraction": 0.25, "amp_interval": 2}),
    # Δ from the optimizer's first moment (AdamW's exp_avg here): no ascent pass, ideally ERM's step
    "AMP momentum": (AMPTrainer, {"amp_direction": "momentum"}),
}


# ----------------------------------------------------------------------------------------------- the models
def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(config), text_batch(32, 64, 1000)


def minilm():
    from transformers import AutoModelForSequenceClassification

    from amp_hf.tasks.models import minilm_path

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    return model, text_batch(16, 64, model.config.vocab_size)


def example_vit():
    from amp_hf.tasks.models import image_classifier

    model = image_classifier("vit", num_labels=10, channels=1, image_size=28)  # the image example's default ViT
    g = torch.Generator().manual_seed(0)
    return model, {"pixel_values": torch.randn(64, 1, 28, 28, generator=g), "labels": torch.randint(0, 10, (64,))}


def text_batch(batch: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1, vocab, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }


MODELS = {"tiny BERT (h64, 2 layers), 32x64 tokens": tiny_bert, "MiniLM-L6, 16x64 tokens": minilm,
          "example ViT (h192, 6 layers), 64 images": example_vit}  # fmt: skip


def amp_args(config) -> dict:
    """The AMPTrainingArguments keywords benchmarks.methods' cost model reads, from a trainer's AMPConfig."""
    return {"amp_inner_steps": config.inner_steps, "amp_interval": config.interval, "amp_direction": config.direction,
            "amp_ascent_fraction": config.ascent_fraction, "amp_epsilon": config.epsilon}  # fmt: skip


def time_model(name: str, build, rounds: int, only: list[str] | None = None) -> dict:
    model, batch = build()
    model.train()
    chosen = {key: value for key, value in SETTINGS.items() if key == "ERM" or not only or key in only}
    trainers = {key: make_trainer(cls, model, **amp) for key, (cls, amp) in chosen.items()}
    erm = trainers["ERM"]
    samples: dict[str, list[float]] = {key: [] for key in [*chosen, "forward/backward", "optimizer step"]}

    for trainer in trainers.values():  # warm-up: allocator, lazy initialisations
        train_step(trainer, model, batch, 0)
    for r in range(rounds):
        samples["forward/backward"].append(timed(lambda: erm.training_step(model, dict(batch))))
        samples["optimizer step"].append(timed(lambda: optimizer_step(erm)))
        for key, trainer in trainers.items():
            cycle = trainer.amp_config.interval if key != "ERM" else 1
            # a whole cycle of the interval (one AMP step, interval − 1 ERM steps), per step
            steps = range(r * cycle, (r + 1) * cycle)
            samples[key].append(timed(lambda t=trainer, s=steps: [train_step(t, model, batch, i) for i in s]) / cycle)
    # Ratios are taken round by round (each setting against the ERM step of the same round), then the median: the
    # machine's drift between rounds cancels. The ideal of a round: passes × (ERM step − optimizer step) + optimizer
    # step, i.e. the ERM step's own forward/backward repeated, from the same round's parts.
    erm_steps, opt_steps = samples["ERM"], samples["optimizer step"]
    rows = {}
    for key in chosen:
        passes = 1.0 if key == "ERM" else passes_per_step(amp_args(trainers[key].amp_config))
        ideal = [passes * (e - o) + o for e, o in zip(erm_steps, opt_steps)]
        rows[key] = {
            "median_step_s": round(statistics.median(samples[key]), 4),
            "passes_per_step": passes,
            "vs_erm": round(statistics.median(a / e for a, e in zip(samples[key], erm_steps)), 3),
            "vs_ideal": round(statistics.median(a / i for a, i in zip(samples[key], ideal)), 3),
        }
    if "AMP K=1" in chosen:  # each setting against full AMP (K = 1, whole micro-batch) of the same round
        for key in chosen:
            ratios = [a / f for a, f in zip(samples[key], samples["AMP K=1"])]
            rows[key]["vs_amp_k1"] = round(statistics.median(ratios), 3)
    fb = statistics.median(samples["forward/backward"])
    opt = statistics.median(opt_steps)
    print(f"\n{name}: forward/backward {fb:.4f} s, optimizer step {opt:.4f} s, {rounds} interleaved rounds")
    for key, row in rows.items():
        print(f"  {key:16s} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    result = {"forward_backward_s": fb, "optimizer_step_s": opt, "rounds": rounds, "settings": rows}
    if "AMP momentum" in chosen:
        result["momentum_tensor_peak"] = momentum_tensor_peak(trainers, model, batch)
        result["momentum_arithmetic_vs_erm_step"] = momentum_arithmetic_share(trainers, model, batch, rounds)
    return result


def momentum_arithmetic_share(trainers: dict, model, batch, rounds: int) -> float:
    """The momentum direction's own arithmetic (save θ, m's norms, θ − f·m, restore) over an ERM step, by the clock:
    `momentum_perturbed_weights` on the momentum trainer's own first moments, interleaved with ERM steps; the median of
    the round-by-round ratios. What the step costs beyond it is glue and the machine's noise."""
    amp = trainers["AMP momentum"]
    params = [p for _, p in amp.amp_parameters(model)]
    moments = first_moments(amp.optimizer, params)
    saved = amp._amp._theta.for_params(params)
    steps, arithmetic = [], []
    for step in range(rounds):
        steps.append(timed(lambda s=step: train_step(trainers["ERM"], model, batch, s)))
        arithmetic.append(timed(lambda: _perturb_along_momentum_and_restore(params, moments, amp.amp_config, saved)))
    share = round(statistics.median(a / s for a, s in zip(arithmetic, steps)), 4)
    print(f"  momentum direction: its arithmetic, timed alone = {100 * share:.2f}% of an ERM step")
    return share


def _perturb_along_momentum_and_restore(params, moments, config, saved) -> None:
    with momentum_perturbed_weights(params, moments, config, saved):
        pass


def momentum_tensor_peak(trainers: dict, model, batch) -> dict:
    """The momentum direction's extra peak of live tensors over ERM's, in parameter bytes, from torch.profiler's
    memory timeline (`steps.tensor_peak_bytes`): the algorithm holds one copy of θ (and, for the elementwise ball,
    temporaries), so this should read about 1."""
    erm = tensor_peak_bytes(trainers["ERM"], model, batch)
    momentum = tensor_peak_bytes(trainers["AMP momentum"], model, batch)
    extra = round((momentum - erm) / parameter_bytes(model), 3)
    print(f"  momentum direction: extra peak of live tensors over ERM = {extra}x parameter bytes")
    return {"erm_bytes": erm, "momentum_bytes": momentum, "extra_in_param_bytes": extra}


# ---------------------------------------------------------------------------------------------- profile
AMP_PHASES = ("amp.save", "amp.ascent_pass", "amp.step_and_project", "amp.set_weights", "amp.descent_pass",
              "amp.restore")  # fmt: skip
"""The ranges perturbed_weights and AMPTrainer name for torch.profiler, in the order a step runs them."""


def profile_model(name: str, build, steps: int) -> dict:
    """Where an AMP K=1 step's time goes beyond its ideal (two ERM passes and one optimizer step), from torch.profiler.

    ERM and AMP steps alternate under one profiler; every time is the mean CPU time of a named range per step. The
    overhead is split into: the ascent pass against an ERM pass (`torch.autograd.grad` instead of `backward`), the
    descent pass against an ERM pass, AMP's own arithmetic (save θ, Δ and its projection, θ + Δ, restore), and the
    rest of the step (Python glue).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    model, batch = build()
    model.train()
    erm, amp = make_trainer(Trainer, model), make_trainer(AMPTrainer, model, amp_inner_steps=1)

    def erm_step(step: int) -> None:
        with record_function("erm.step"):
            with record_function("erm.pass"):
                erm.training_step(model, dict(batch))
            with record_function("optimizer"):
                optimizer_step(erm)

    def amp_step(step: int) -> None:
        amp.state.global_step = step
        with record_function("amp.step"):
            amp.training_step(model, dict(batch))
            with record_function("optimizer"):
                optimizer_step(amp)

    for step in range(2):  # warm-up
        erm_step(step)
        amp_step(step)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(steps):
            erm_step(step)
            amp_step(step)
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.split(".")[0] in ("amp", "erm")}
    per_step = {key: totals.get(key, 0.0) / steps for key in ("erm.step", "erm.pass", "amp.step", *AMP_PHASES)}
    optimizer = per_step["erm.step"] - per_step["erm.pass"]  # the optimizer range, from the ERM side
    ideal = 2 * per_step["erm.pass"] + optimizer
    arithmetic = sum(per_step[k] for k in ("amp.save", "amp.step_and_project", "amp.set_weights", "amp.restore"))
    parts = {
        "ascent pass - ERM pass": per_step["amp.ascent_pass"] - per_step["erm.pass"],
        "descent pass - ERM pass": per_step["amp.descent_pass"] - per_step["erm.pass"],
        "AMP arithmetic (save, project, perturb, restore)": arithmetic,
        "rest of the AMP step (glue)": per_step["amp.step"] - optimizer - arithmetic
        - per_step["amp.ascent_pass"] - per_step["amp.descent_pass"],
    }  # fmt: skip
    param_bytes = parameter_bytes(model)
    extra = tensor_peak_bytes(amp, model, batch) - tensor_peak_bytes(erm, model, batch)
    result = {
        "extra_tensor_peak_in_param_bytes": round(extra / param_bytes, 4),
        "steps": steps,
        "seconds_per_step": {k: round(v, 5) for k, v in per_step.items()},
        "amp_step_vs_ideal": round(per_step["amp.step"] / ideal, 3),
        "overhead_in_ideal_step_units": {k: round(v / ideal, 4) for k, v in parts.items()},
        "arithmetic_unprofiled_in_ideal_step_units": round(unprofiled_share(erm, amp, model, batch, steps), 4),
    }
    print(f"\n{name}: profiled {steps} ERM and {steps} AMP K=1 steps, alternating")
    print(f"  AMP step / ideal (2 ERM passes + optimizer step) = {result['amp_step_vs_ideal']}")
    for key, value in result["overhead_in_ideal_step_units"].items():
        print(f"  {key:50s} {100 * value:+.2f}% of the ideal step")
    share = result["arithmetic_unprofiled_in_ideal_step_units"]
    print(f"  {'AMP arithmetic, timed without the profiler':50s} {100 * share:+.2f}% of the ideal step")
    print(
        f"  extra peak of live tensors, AMP K=1 over ERM: {result['extra_tensor_peak_in_param_bytes']}x parameter bytes"
    )
    return result


def unprofiled_share(erm, amp, model, batch, steps: int) -> float:
    """AMP K=1's own arithmetic (save θ, Δ's norms and projection, θ + Δ, restore) over the ideal step, by the clock.

    The profiler adds a fixed cost to every operator it records, which can inflate the arithmetic of a model with
    many small tensors (AMP runs a few operators per tensor). Here the same `perturbed_weights` runs with a stored
    gradient in place of the ascent pass, and the ideal step (two ERM passes and an optimizer step) is timed the
    same way; medians over `steps`. At K = 1 and ζ = 1 nothing writes into the gradient, so one stored gradient
    serves every run.
    """
    params = [p for _, p in amp.amp_parameters(model)]
    saved = amp._amp._theta.for_params(params)
    config = replace(amp.amp_config, inner_steps=1, inner_lr=1.0)
    stored = (torch.zeros(()), [torch.randn_like(p) * 1e-3 for p in params])
    passes, optimizer, arithmetic = [], [], []
    for _ in range(steps):
        passes.append(timed(lambda: erm.training_step(model, dict(batch))))
        optimizer.append(timed(lambda: optimizer_step(erm)))
        arithmetic.append(timed(lambda: _perturb_and_restore(params, stored, config, saved)))
    ideal = 2 * statistics.median(passes) + statistics.median(optimizer)
    return statistics.median(arithmetic) / ideal


def _perturb_and_restore(params, stored, config, saved) -> None:
    with perturbed_weights(params, lambda: stored, config, saved):
        pass


# ----------------------------------------------------------------------------------------------- memory
def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(model_key: str, setting: str, steps: int) -> None:
    """In a fresh process: the peak RSS growth over `steps` steps of one setting (printed as JSON).

    RSS is sampled every 0.5 ms by a thread (torch releases the GIL in its kernels). The parent runs this with glibc's
    mmap threshold fixed low, so tensor memory is returned to the system when freed and RSS follows live tensors.
    """
    import threading

    model, batch = MODELS[model_key]()
    cls, amp = SETTINGS[setting]
    trainer = make_trainer(cls, model, **amp)
    param_bytes = parameter_bytes(model)
    base, peak, done = current_rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], current_rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for step in range(steps):
        train_step(trainer, model, batch, step)
    done.set()
    sampler.join()
    print(json.dumps({"param_bytes": param_bytes, "peak_growth_bytes": max(peak[0], current_rss()) - base}))


def measure_memory(model_key: str, steps: int) -> dict:
    growth = {}
    for setting in ("ERM", "AMP K=1"):
        cmd = [sys.executable, "-m", "benchmarks.cost", "--memory-probe", model_key, setting, str(steps)]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        run = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
        out = run.stdout.strip().splitlines()[-1]
        growth[setting] = json.loads(out)
    param_bytes = growth["ERM"]["param_bytes"]
    extra = growth["AMP K=1"]["peak_growth_bytes"] - growth["ERM"]["peak_growth_bytes"]
    result = {
        "param_bytes": param_bytes,
        "erm_peak_growth_bytes": growth["ERM"]["peak_growth_bytes"],
        "amp_peak_growth_bytes": growth["AMP K=1"]["peak_growth_bytes"],
        "extra_peak_in_param_bytes": round(extra / param_bytes, 3),
    }
    print(f"  memory (peak RSS, fresh processes): AMP K=1 uses {result['extra_peak_in_param_bytes']}x parameter bytes "
          f"more than ERM ({param_bytes / 2**20:.1f} MiB of parameters)")  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--profile", action="store_true", help="only profile where AMP's step time and memory go")
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="time these settings (and ERM) only")
    parser.add_argument("--memory-probe", nargs=3, metavar=("MODEL", "SETTING", "STEPS"), help=argparse.SUPPRESS)
    cli = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if cli.memory_probe:
        memory_probe(cli.memory_probe[0], cli.memory_probe[1], int(cli.memory_probe[2]))
        return
    models = list(MODELS)[:1] if cli.quick else list(MODELS)
    rounds = cli.rounds or (3 if cli.quick else 8)
    if cli.profile:
        profiles = {name: profile_model(name, MODELS[name], steps=rounds) for name in models}
        Path(cli.out).mkdir(parents=True, exist_ok=True)
        path = Path(cli.out) / ("cost_profile_quick.json" if cli.quick else "cost_profile.json")
        path.write_text(json.dumps({"command": command("cost"), **profiles}, indent=2))
        print(f"\nwrote {path}")
        return
    results = {}
    for name in models:
        results[name] = time_model(name, MODELS[name], rounds, cli.only)
        if not cli.only:
            results[name]["memory"] = measure_memory(name, steps=3)
    record = {
        "command": command("cost"),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "results": results,
    }
    Path(cli.out).mkdir(parents=True, exist_ok=True)
    path = Path(cli.out) / ("cost_quick.json" if cli.quick else "cost_selected.json" if cli.only else "cost.json")
    path.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
