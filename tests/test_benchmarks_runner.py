"""benchmarks.runner: what the run cache key holds (settings and code), which record a study gets in a training
invocation and with --cached-only, and that the committed records still match the task definitions. Also the
passes model of benchmarks.methods. No training here (the studies' smoke run: test_benchmarks_studies.py)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from amp_hf import AMPTrainingArguments
from benchmarks import runner
from benchmarks.methods import ERM, SAM_GLOBAL, Method, passes_per_step
from benchmarks.runner import RUNS, Protocol, RunStore, Scheduler, Spec, run_key
from benchmarks.tasks import TASKS

CODE = {"amp_hf": "a" * 12, "benchmarks": "b" * 12, "torch": "2", "transformers": "5", "accelerate": "1"}


def test_cache_key_holds_the_settings_and_the_code(monkeypatch):
    spec = Spec("vit_mnist", ERM, 0)
    key = run_key(spec.settings_key(), CODE)
    assert key == run_key(Spec("vit_mnist", ERM, 0).settings_key(), CODE)
    for other in (Spec("vit_mnist", ERM, 1), Spec("vit_mnist", SAM_GLOBAL, 0), Spec("vit_mnist", ERM, 0, True),
                  Spec("vit_mnist", ERM, 0, protocol=Protocol(keep_best=False))):  # fmt: skip
        assert run_key(other.settings_key(), CODE) != key
    for field, value in (("amp_hf", "c" * 12), ("benchmarks", "c" * 12), ("torch", "3"), ("transformers", "6")):
        assert run_key(spec.settings_key(), {**CODE, field: value}) != key  # other code: another run
    monkeypatch.setitem(TASKS, "vit_mnist", replace(TASKS["vit_mnist"], epochs=1))
    assert run_key(spec.settings_key(), CODE) != key  # the task's budget is part of the settings


def test_code_identity_hashes_the_imported_library():
    """compare's identity of the libraries (amp_hf's version and source hash) and the hash of the run code."""
    code = runner.code_identity()
    assert set(code) == {"amp_hf", "benchmarks", "torch", "transformers", "accelerate"}
    assert re.fullmatch(r"\S+ \(source [0-9a-f]{12}\)", code["amp_hf"]) and len(code["benchmarks"]) == 12


def record(spec: Spec, code: dict, test_error: float) -> dict:
    settings_key = spec.settings_key()
    return {"key": run_key(settings_key, code), "settings_key": settings_key, "code": code, "task": spec.task,
            "method": spec.method.name, "seed": spec.seed, "test_error": test_error}  # fmt: skip


def test_a_run_made_by_other_code_is_trained_again_but_reported_from_with_cached_only(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "code_identity", lambda: CODE)
    store = RunStore(tmp_path / "runs.jsonl")
    old, current, missing = Spec("vit_mnist", ERM, 0), Spec("vit_mnist", ERM, 1), Spec("vit_mnist", ERM, 2)
    store.add(record(old, {"commit": "f" * 40, "torch": "2", "transformers": "5"}, 0.3))
    store.add(record(current, CODE, 0.2))
    store = RunStore(tmp_path / "runs.jsonl")  # read back from the file

    training = Scheduler(1, store)
    training.add([old, current, missing], priority=0)
    assert set(training.done) == {current}  # the old code's run is not reused
    assert {spec for _, spec in training.pending} == {old, missing}

    reporting = Scheduler(1, store, cached_only=True)
    reporting.add([old, current, missing], priority=0)
    assert reporting.done[old]["test_error"] == 0.3 and not reporting.pending
    assert reporting.missing == [missing]
    made_by = reporting.made_by()
    assert sum(made_by.values()) == 2 and any(label.startswith("the code of commit ffffffff") for label in made_by)


@pytest.mark.parametrize("study", ["transfer", "accuracy"])
def test_recorded_runs_match_the_current_task_definitions(study):
    """Every committed record's settings are what its spec resolves to now, and its AMP arguments are valid: a
    changed task, family, method or protocol would make these records look like runs of other settings."""
    rows = [json.loads(line) for line in (RUNS / f"{study}.jsonl").read_text().splitlines()]
    assert rows and len({r["settings_key"] for r in rows}) == len(rows)
    for r in rows:
        args = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in r["args"].items()))
        method = Method(r["settings"]["method"]["name"], args, r["start"])
        protocol = Protocol(**r["settings"]["protocol"])
        spec = Spec(r["task"], method, r["seed"], r["quick"], protocol)
        assert spec.settings() == r["settings"] and spec.settings_key() == r["settings_key"]
        assert r["key"] == run_key(r["settings_key"], r["code"])
        assert "commit" in r["code"] and r["code"]["torch"] and r["code"]["transformers"]  # made by a known commit
        if r["args"]:
            AMPTrainingArguments(output_dir="unused", report_to="none", use_cpu=True, **r["args"])


def test_passes_model():
    assert passes_per_step({}, 0) == 1
    assert passes_per_step({"amp_inner_steps": 0}, 0) == 1
    assert passes_per_step({"amp_inner_steps": 1}, 0) == 2
    assert passes_per_step({"amp_inner_steps": 2, "amp_interval": 4}, 0) == 1.5
    assert passes_per_step({"amp_inner_steps": 1, "amp_ascent_fraction": 0.25, "amp_interval": 2}, 0) == 1.125
    assert passes_per_step({"amp_inner_steps": 1}, 0.5) == 1.5


def test_runs_directory_is_inside_the_results():
    assert RUNS.parent == Path(runner.RESULTS) and RUNS.is_dir()
