"""The studies as a user runs them, `python -m benchmarks.<study>` from the project root: each answers --help; no
benchmark edits sys.path, imports examples/ or another study; the committed reports regenerate from the committed
run records (--cached-only) with the same tables and recommendations; a real smoke run trains and records."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
STUDIES = ("accuracy", "transfer", "frontier", "cost_frontier", "cost", "flatness", "device_check", "momentum_study")


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=True)  # fmt: skip


def imports(path: Path) -> set[str]:
    """The modules a file imports, relative ones as benchmarks.<name>."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(f"benchmarks.{node.module}" if node.level else node.module)
    return names


def test_benchmarks_are_a_package_whose_studies_import_only_shared_modules():
    for path in BENCHMARKS.glob("*.py"):
        source = path.read_text()
        assert "sys.path" not in source, f"{path.name} edits sys.path"
        imported = imports(path)
        assert not {m for m in imported if m.split(".")[0] in ("examples", "common", "image_classification",
                                                              "text_classification")}, path.name  # fmt: skip
        others = {f"benchmarks.{s}" for s in STUDIES} - {f"benchmarks.{path.stem}"}
        assert not imported & others, f"{path.name} imports another study: {imported & others}"
    for path in (ROOT / "examples").glob("*.py"):
        assert "benchmarks" not in {m.split(".")[0] for m in imports(path)}, f"{path.name} imports the benchmarks"


@pytest.mark.parametrize("study", STUDIES)
def test_each_study_answers_help_from_the_project_root(study):
    assert "usage:" in run(f"benchmarks.{study}", "--help", timeout=120).stdout


def tables(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("study", ["transfer", "accuracy"])
def test_reports_regenerate_from_the_recorded_runs(study, tmp_path):
    """--cached-only trains nothing and writes the committed report: the same Markdown (tables and text), the same
    summary, and (transfer) the same recommended.json entries."""
    run(f"benchmarks.{study}", "--cached-only", "--out", str(tmp_path))
    assert (tmp_path / f"{study}.md").read_text() == (RESULTS / f"{study}.md").read_text()
    new, committed = (json.loads(p.read_text()) for p in (tmp_path / f"{study}.json", RESULTS / f"{study}.json"))
    assert new["runs_trained"] == 0 and new["run_keys"] == committed["run_keys"]
    key = "families" if study == "transfer" else "tasks"
    assert new[key] == committed[key]
    if study == "transfer":
        committed_entries = json.loads((RESULTS / "recommended.json").read_text())
        written = json.loads((tmp_path / "recommended.json").read_text())
        assert written == {k: committed_entries[k] for k in new["recommended"]}


def test_frontier_without_its_records_writes_a_partial_report_and_no_recommendation(tmp_path):
    result = run("benchmarks.frontier", "--cached-only", "--out", str(tmp_path))
    assert "runs have no record" in result.stdout
    report = json.loads((tmp_path / "frontier_long.json").read_text())
    assert report["runs_not_run"] and report["choice"] is None and report["recommended"]
    assert (tmp_path / "frontier_long.md").exists() and not (tmp_path / "recommended.json").exists()


def test_momentum_study_without_records_chooses_nothing_and_proposes_nothing(tmp_path):
    """The protocol's candidates are valid settings of the momentum direction; without runs nothing is chosen."""
    from amp_hf import AMPConfig
    from benchmarks.momentum_study import CANDIDATES

    for method in CANDIDATES:
        assert AMPConfig(**{k.removeprefix("amp_"): v for k, v in method.kwargs.items()}).direction == "momentum"
    result = run("benchmarks.momentum_study", "--cached-only", "--cache", str(tmp_path / "none.jsonl"), "--out",
                 str(tmp_path))  # fmt: skip
    assert "runs have no record" in result.stdout
    report = json.loads((tmp_path / "momentum_study.json").read_text())
    assert len(report["runs_not_run"]) == 3 * (2 + len(CANDIDATES)) + 5 * 3
    assert report["choice"] is None and report["proposed"] is None


def test_momentum_study_transformer_families_run_their_own_protocol(tmp_path):
    """--family vit text: each family tunes on its own task (ERM and the candidates; the full ascent only on the
    held-out task), writes its own report, and claims no evidence without runs."""
    from benchmarks.momentum_study import PHASES, TUNING_SEEDS

    result = run("benchmarks.momentum_study", "--family", "vit", "text", "--cached-only", "--cache",
                 str(tmp_path / "none.jsonl"), "--out", str(tmp_path))  # fmt: skip
    for family, tasks in (
        ("vit", ("vit_fmnist_noisy", "vit_mnist_noisy")),
        ("text", ("text_rt_noisy", "text_speeches_noisy")),
    ):
        phase = PHASES[family]
        assert (phase.tune, phase.check) == tasks and phase.rule == "beats_erm"
        report = json.loads((tmp_path / f"momentum_study_{family}.json").read_text())
        missing = report["runs_not_run"]
        assert len(missing) == len(TUNING_SEEDS) * (1 + len(phase.candidates)) + 5 * 2
        assert not any(phase.full.name in m for m in missing if m.startswith(phase.tune))
        assert report["choice"] is None and report["evidence_for_family"] is False
        assert "TRANSFORMER FAMILIES" in report["protocol"] and "proposed" not in report
    assert not (tmp_path / "momentum_study.json").exists() and "text: 31 runs have no record" in result.stdout


def test_quick_study_trains_records_and_reuses_its_runs(tmp_path):
    """The smoke run of the accuracy study on one task: real training, every code path, files written; run again,
    it trains nothing (the records match the settings and the code)."""
    cache = tmp_path / "runs.jsonl"
    command = ["benchmarks.accuracy", "--quick", "--tasks", "cnn", "--out", str(tmp_path), "--cache", str(cache)]
    run(*command)
    report = json.loads((tmp_path / "accuracy.json").read_text())
    assert report["runs_trained"] == len(report["run_keys"]) > 0  # a fresh cache: this invocation trained every run
    task = report["tasks"]["cnn"]
    assert task["recommended"] in task["methods"]
    assert any(", every 4" in label for label in task["methods"])
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    for label, method in task["methods"].items():  # each mean is that of its own runs' test errors
        runs = {row["test_error"] for row in rows if row["method"] == label}
        assert method["test_errors"] and set(method["test_errors"]) <= runs, (label, method["test_errors"], runs)
        assert method["test_error_mean"] == pytest.approx(sum(method["test_errors"]) / len(method["test_errors"]))
    errors = {row["method"]: row["test_error"] for row in rows}
    assert errors["ERM"] != errors["AMP tensor ε=0.5"]  # the defaults really perturbed the weights
    assert all("commit" not in row["code"] and row["code"]["amp_hf"] for row in rows)  # keyed to this code
    for name in ("accuracy.png", "frontier.png", "loss_curves.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    run(*command)
    assert json.loads((tmp_path / "accuracy.json").read_text())["runs_trained"] == 0
