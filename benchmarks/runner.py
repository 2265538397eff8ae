"""One training run, the run cache, and the scheduler that trains what the cache lacks.

A run is a `Spec` (task, method, seed, quick, protocol). Its record is cached in a JSON-lines file under a key made of
everything that determines the result: the run's full settings (the task, family, method, seed, protocol, label-noise
rate and quick sizes, as resolved at run time) and the code that trains it (`code_identity`: amp_hf's version and
source hash and the torch, transformers and accelerate versions, as compare identifies a run, and a hash of this
package's run code). A training invocation reuses a record only when both match; a run made by other code is trained
again. `--cached-only` reports from the newest record with the same settings, whatever code made it, and the report
says which code that was.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from .methods import Method, passes_per_step
from .tasks import FAMILIES, NOISE_RATE, QUICK_SIZES, TASKS, build

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "records"
"""The committed run records, one JSON-lines file per study (the frontier study shares the transfer study's)."""
OUTPUTS = ROOT / "outputs"
RUN_CODE = ("data.py", "tasks.py", "methods.py", "runner.py")
"""This package's modules that a run's result depends on (hashed into the cache key with the amp_hf package)."""


# -------------------------------------------------------------------------------------------------- a run
@dataclass(frozen=True)
class Protocol:
    """How a run is evaluated. keep_best: validation after every epoch, the best weights (lowest error, then loss)
    are kept in memory and tested (early stopping, the transfer study); else the final weights are (the accuracy
    study). curve_size: validation examples of the per-epoch curve (None: all of them)."""

    keep_best: bool = True
    curve_size: int | None = None
    logs_per_epoch: int = 2


@dataclass(frozen=True)
class Spec:
    task: str
    method: Method
    seed: int
    quick: bool = False
    protocol: Protocol = field(default_factory=Protocol)

    def settings(self) -> dict[str, Any]:
        """Everything about the run that determines its result, except the code."""
        task = TASKS[self.task]
        return {
            "task": self.task,
            "task_record": asdict(task),
            "family": asdict(FAMILIES[task.family]),
            "method": {"name": self.method.name, "args": self.method.kwargs, "start": self.method.start},
            "seed": self.seed,
            "quick_sizes": QUICK_SIZES if self.quick else None,
            "protocol": asdict(self.protocol),
            "noise_rate": NOISE_RATE if task.noisy else None,
        }

    def settings_key(self) -> str:
        return digest(self.settings())


def digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(settings_key: str, code: dict[str, Any]) -> str:
    """The cache key: the run's settings and the code that made it."""
    return digest([settings_key, code])


@functools.cache
def code_identity() -> dict[str, str]:
    """The code a run made now comes from: the identity compare gives a run (`amp_hf.compare.identity`: amp_hf's
    version and source hash, the torch, transformers and accelerate versions) and a hash of this package's run code."""
    from amp_hf.compare.identity import files_digest, library_versions

    here = Path(__file__).resolve().parent
    return {**library_versions(), "benchmarks": files_digest((here / name for name in RUN_CODE), here)}


def code_label(code: dict[str, Any]) -> str:
    """A short description of the code that made a run, for reports."""
    versions = f"torch {code.get('torch')}, transformers {code.get('transformers')}"
    if "commit" in code:
        return f"the code of commit {code['commit'][:9]} ({versions})"
    return f"amp_hf {code.get('amp_hf')}, benchmarks {code.get('benchmarks')} ({versions})"


# ----------------------------------------------------------------------------------------------- training
def evaluate(model: torch.nn.Module, data: torch.utils.data.Dataset, collator: Callable, batch_size: int = 64):
    """(mean cross-entropy, error rate) on `data`, in eval mode; the model's mode is put back afterwards."""
    was_training = model.training
    model.eval()
    loss_sum, wrong, count = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = collator([data[i] for i in range(start, min(start + batch_size, len(data)))])
            labels = batch.pop("labels")
            logits = model(**batch).logits
            loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            wrong += (logits.argmax(-1) != labels).sum().item()
            count += len(labels)
    model.train(was_training)
    return loss_sum / count, wrong / count


def study_args(outputs: Path, batch_size: int, epochs: float, seed: int, logging_steps: int, **settings: Any):
    """The AMPTrainingArguments every study run shares: a cosine schedule with 5% warm-up, one CPU process, nothing
    saved, reported or printed; `settings` adds the optimizer and amp_* keywords."""
    from amp_hf import AMPTrainingArguments

    return AMPTrainingArguments(
        output_dir=str(outputs / "trainer"),  # nothing is saved there (save_strategy="no")
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        seed=seed,
        logging_steps=logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        log_level="error",
        **settings,
    )


def perturbed_summary(model: torch.nn.Module, args: Any) -> dict[str, Any]:
    """Which trainable tensors AMP perturbs in this run (names with layer numbers folded), and what each include
    pattern matches: the check that SAM-ON's pattern list selects something in every model."""
    from amp_hf.config import AMPConfig

    config = AMPConfig.from_args(args)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    chosen = [n for n in names if config.selects(n)]
    return {
        "perturbed_tensors": len(chosen),
        "trainable_tensors": len(names),
        "perturbed_names": sorted({re.sub(r"\.\d+\.", ".*.", n) for n in chosen}) if config.include else [],
        "include_matches": {p: sum(bool(re.search(p, n)) for n in names) for p in config.include},
    }


def train(spec: Spec) -> dict[str, Any]:
    """Trains one run in this (worker) process; returns its record: errors, losses, times and curves."""
    torch.set_num_threads(1)
    from transformers import PrinterCallback, Trainer, TrainerCallback, set_seed

    from amp_hf import AMPTrainer

    task, family, protocol = TASKS[spec.task], FAMILIES[TASKS[spec.task].family], spec.protocol
    set_seed(spec.seed)  # the model's initialisation (the text models' fresh head) follows the seed
    data, facts = build(spec.task, spec.quick, spec.seed)
    epochs = 1 if spec.quick else task.epochs
    steps_per_epoch = math.ceil(len(data.train) / family.batch_size)
    amp_kwargs = spec.method.kwargs if not spec.method.is_erm else {"amp_inner_steps": 0}
    args = study_args(
        OUTPUTS / "runs",
        batch_size=family.batch_size,
        epochs=epochs,
        seed=spec.seed,
        logging_steps=max(1, steps_per_epoch // protocol.logs_per_epoch),
        amp_start_step=int(spec.method.start * math.ceil(steps_per_epoch * epochs)),
        **amp_kwargs,
        **family.optimizer,
        **family.trainer_args,
    )
    perturbed = perturbed_summary(data.model, args) if not spec.method.is_erm else {}
    if perturbed and perturbed["perturbed_tensors"] == 0:
        raise RuntimeError(f"{spec.method.name} perturbs no parameter of the {spec.task} model")
    curve_rows = data.validation
    if protocol.curve_size is not None:
        curve_rows = torch.utils.data.Subset(data.validation, range(min(protocol.curve_size, len(data.validation))))
    curves: dict[str, list[float]] = {"epoch": [], "val_loss": [], "val_error": []}
    best: dict[str, Any] = {"key": (math.inf, math.inf), "state": None, "epoch": None}
    eval_seconds, eval_cpu = [0.0], [0.0]

    class EpochEval(TrainerCallback):
        """Validation after each epoch (keep_best: the best weights copied in memory); timed, so that the training
        time excludes it."""

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            loss, error = evaluate(model, curve_rows, data.collator)
            curves["epoch"].append(round(state.epoch, 3))
            curves["val_loss"].append(loss)
            curves["val_error"].append(error)
            if protocol.keep_best and (error, loss) < best["key"]:
                best.update(key=(error, loss), epoch=round(state.epoch, 3), state=copy.deepcopy(model.state_dict()))
            eval_seconds[0] += time.perf_counter() - start
            eval_cpu[0] += time.process_time() - cpu

    trainer_cls = Trainer if spec.method.is_erm else AMPTrainer
    trainer = trainer_cls(
        model=data.model, args=args, train_dataset=data.train, data_collator=data.collator, callbacks=[EpochEval()]
    )
    trainer.remove_callback(PrinterCallback)  # the log lines of two workers would interleave; the record says it all
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    train_seconds = time.perf_counter() - start - eval_seconds[0]
    train_cpu_seconds = time.process_time() - cpu - eval_cpu[0]
    history = trainer.state.log_history
    model = trainer.model
    results: dict[str, Any] = {}
    if protocol.keep_best:
        final_train_loss, final_train_error = evaluate(model, data.train, data.collator)
        final_test_loss, final_test_error = evaluate(model, data.test, data.collator)
        if best["epoch"] == curves["epoch"][-1]:  # the best weights are the final ones
            test_loss, test_error = final_test_loss, final_test_error
        else:
            model.load_state_dict(best["state"])
            test_loss, test_error = evaluate(model, data.test, data.collator)
        results = {
            "val_error": best["key"][0],
            "val_loss": best["key"][1],
            "best_epoch": best["epoch"],
            "test_error": test_error,
            "test_loss": test_loss,
            "final_val_error": curves["val_error"][-1],
            "final_test_error": final_test_error,
            "final_test_loss": final_test_loss,
            "final_train_loss": final_train_loss,
            "final_train_error": final_train_error,
        }
    else:
        if len(curve_rows) == len(data.validation) and curves["epoch"][-1:] == [round(trainer.state.epoch, 3)]:
            val_loss, val_error = curves["val_loss"][-1], curves["val_error"][-1]  # already evaluated there
        else:
            val_loss, val_error = evaluate(model, data.validation, data.collator)
        test_loss, test_error = evaluate(model, data.test, data.collator)
        results = {"val_error": val_error, "val_loss": val_loss, "test_error": test_error, "test_loss": test_loss}
    return {
        "task": spec.task,
        "method": spec.method.name,
        "args": spec.method.kwargs,
        "start": spec.method.start,
        "seed": spec.seed,
        "quick": spec.quick,
        **results,
        "train_seconds": round(train_seconds, 2),
        "train_cpu_seconds": round(train_cpu_seconds, 2),
        "eval_seconds": round(eval_seconds[0], 2),
        "steps": trainer.state.global_step,
        "passes_per_step": passes_per_step(amp_kwargs, spec.method.start),
        "amp_skipped": sum(h.get("amp_skipped", 0) for h in history),
        "amp_delta_norm": [(h["epoch"], h["amp_delta_norm"]) for h in history if "amp_delta_norm" in h],
        # the training loss at θ, as recorded before issue 26 (AMP's `loss` is now its descent's, at θ + Δ)
        "logged_loss": [(h["epoch"], h.get("amp_clean_loss", h["loss"])) for h in history if "loss" in h],
        "curve": curves,
        "data": facts,
        **({"perturbed": perturbed} if perturbed else {}),
    }


def train_and_record(spec: Spec) -> dict[str, Any]:
    """`train`, and the record's cache fields: its settings and the code that made it."""
    code = code_identity()
    settings_key = spec.settings_key()
    row = train(spec)
    return {"key": run_key(settings_key, code), "settings_key": settings_key, "code": code, **row,
            "settings": spec.settings()}  # fmt: skip


# ---------------------------------------------------------------------------------------------- the cache
class RunStore:
    """The run records of a JSON-lines file, by key and by settings; `add` appends one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.by_key: dict[str, dict[str, Any]] = {}
        self.by_settings: dict[str, dict[str, Any]] = {}
        lines = path.read_text().splitlines() if path.exists() else []
        for row in map(json.loads, filter(None, lines)):
            self._index(row)

    def _index(self, row: dict[str, Any]) -> None:
        self.by_key[row["key"]] = row
        self.by_settings[row["settings_key"]] = row  # the newest record of these settings wins

    def find(self, spec: Spec, any_code: bool = False) -> dict[str, Any] | None:
        """The record of `spec` made by the current code; any_code: the newest with its settings, whatever code."""
        if any_code:
            return self.by_settings.get(spec.settings_key())
        return self.by_key.get(run_key(spec.settings_key(), code_identity()))

    def add(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._index(row)


def _cost(spec: Spec) -> float:
    """Relative run time (to start long runs first): epochs × examples × passes × model factor."""
    task = TASKS[spec.task]
    factor = {"vit": 1.0, "text": 45.0, "cnn": 0.5}[task.family]
    return task.epochs * task.train_size * factor * passes_per_step(spec.method.kwargs, spec.method.start)


class Scheduler:
    """Runs specs `workers` at a time in spawned processes, highest priority first, recording each in the store;
    specs can be added while others run (a study's later runs wait on a choice made from its first ones).
    cached_only: train nothing, report from the records of the same settings; what has none is in `missing`.
    train_fn: what trains a spec in a worker (a module-level function, for the spawned processes to import); a study
    that must set something per run around `train_and_record` passes its own."""

    def __init__(
        self,
        workers: int,
        store: RunStore,
        cached_only: bool = False,
        train_fn: Callable[[Spec], dict[str, Any]] = train_and_record,
    ) -> None:
        self.workers, self.store, self.cached_only, self.train_fn = workers, store, cached_only, train_fn
        self.done: dict[Spec, dict[str, Any]] = {}
        self.pending: list[tuple[float, Spec]] = []
        self.trained = 0
        self.missing: list[Spec] = []

    def add(self, specs: Iterable[Spec], priority: float) -> None:
        for spec in specs:
            if spec in self.done or spec in self.missing or any(s == spec for _, s in self.pending):
                continue
            row = self.store.find(spec, any_code=self.cached_only)
            if row is not None:
                self.done[spec] = row
            elif self.cached_only:
                self.missing.append(spec)
            else:
                self.pending.append((priority + _cost(spec) / 1e9, spec))

    def run(self, on_progress: Callable[[], None] = lambda: None) -> None:
        """Until nothing is pending; `on_progress` is called after every finished run (it may add specs)."""
        on_progress()
        running: dict[Any, Spec] = {}
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn")) as pool:
            while self.pending or running:
                while self.pending and len(running) < self.workers:
                    self.pending.sort(key=lambda item: -item[0])
                    _, spec = self.pending.pop(0)
                    running[pool.submit(self.train_fn, spec)] = spec
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec = running.pop(future)
                    row = future.result()
                    self.done[spec] = row
                    self.trained += 1
                    self.store.add(row)
                    final = f" (final {row['final_test_error']:.4f})" if "final_test_error" in row else ""
                    print(
                        f"  {spec.task:20} seed {spec.seed:4} {spec.method.name:28} val {row['val_error']:.4f} "
                        f"test {row['test_error']:.4f}{final}  {row['train_seconds']:.0f} s "
                        f"[{len(self.pending)} pending]",
                        flush=True,
                    )
                on_progress()

    def made_by(self, tasks: Iterable[str] | None = None) -> dict[str, int]:
        """How many of the runs (on `tasks`, default all) each code made (reports say which code their runs came
        from)."""
        counts: dict[str, int] = {}
        for spec, row in self.done.items():
            if tasks is not None and spec.task not in tasks:
                continue
            label = code_label(row["code"])
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))
