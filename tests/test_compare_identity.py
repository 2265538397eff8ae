"""amp_hf.compare.identity: a run is identified by what determines its result (the files its command names, resolved
against the working directory; the train function's source; the libraries), and a finished run whose identity
differs is refused naming what changed. End to end on a stand-in script that trains nothing (a fraction of a second
per run): editing it between two comparisons, and the same relative command from another folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from amp_hf.compare import CompareError, run_comparison
from amp_hf.compare.identity import (
    changes,
    command_files,
    command_identity,
    function_source,
    library_versions,
    training_code,
)
from benchmarks import runner

STAND_IN = """
import json, sys
from pathlib import Path
if "--help" in sys.argv:
    print("usage: train.py [--amp_inner_steps K] [--amp_preset NAME] ...")
    sys.exit(0)
args = sys.argv[1:]
folder, seed = Path(args[args.index("--output_dir") + 1]), int(args[args.index("--seed") + 1])
folder.mkdir(parents=True, exist_ok=True)
loss = 1.0 + 0.1 * seed - (0.05 if "--amp_preset" in args else 0.0)
history = [{"step": 4, "eval_loss": loss}, {"step": 4, "train_runtime": 1.0, "train_loss": loss}]
(folder / "trainer_state.json").write_text(json.dumps({"log_history": history, "best_model_checkpoint": None}))
with open(Path(__file__).with_name("starts.txt"), "a") as out:
    out.write(f"{seed}\\n")
"""


def _comparison(seeds=(0, 1)):
    return run_comparison(
        [sys.executable, "train.py"], seeds=list(seeds), candidates=["cnn_long_noisy"], output_dir="cmp",
        greater_is_better=False,
    )  # fmt: skip


def test_an_edited_script_or_another_folder_is_refused_naming_what_changed(tmp_path, monkeypatch):
    first = tmp_path / "first"
    first.mkdir()
    (first / "train.py").write_text(STAND_IN)
    monkeypatch.chdir(first)
    assert _comparison().seeds == [0, 1]
    starts = first / "starts.txt"
    assert len(starts.read_text().split()) == 4
    _comparison()  # unchanged: every run reused
    assert len(starts.read_text().split()) == 4
    done = json.loads((first / "cmp/runs/erm/seed-0/compare_done.json").read_text())
    assert done["files"] == {"train.py": command_files(["python", "train.py"], first)["train.py"]}
    assert done["cwd"] == str(first.resolve()) and set(done["versions"]) == {"amp_hf", *runner.code_identity()} - {
        "benchmarks"
    }

    (first / "train.py").write_text(STAND_IN + "\n# a new line\n")
    with pytest.raises(CompareError, match=r"train\.py changed since erm seed-0 was trained"):
        _comparison(seeds=(0, 1, 2))  # adding a seed would have mixed the old runs in
    assert len(starts.read_text().split()) == 4  # refused before anything trained

    second = tmp_path / "second"
    shutil.copytree(first, second)
    (second / "train.py").write_text(STAND_IN)  # the same script, in another folder
    monkeypatch.chdir(second)
    with pytest.raises(CompareError, match=r"the working directory changed \(.*first → .*second\)"):
        _comparison()


def test_the_files_a_command_names_are_found_through_launchers_flags_and_modules(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "train.py").write_text("print(1)")
    (tmp_path / "ds.json").write_text("{}")
    (tmp_path / "data.csv").write_text("a,b")
    (tmp_path / "run.py").write_text("print(2)")
    launcher = ["accelerate", "launch", "--num_processes", "2", "run.py", "--deepspeed=ds.json", "--train_file",
                "data.csv", "--missing", "gone.py"]  # fmt: skip
    assert set(command_files(launcher, tmp_path)) == {"run.py", "ds.json"}  # data files other than config: by path
    assert set(command_files(["torchrun", "--nproc_per_node", "2", "-m", "pkg.train"], tmp_path)) == {"pkg/train.py"}
    assert command_files(["python", "-m", "pkg.train"], tmp_path) != command_files(["python", "run.py"], tmp_path)
    identity = command_identity(["python", "run.py"], tmp_path)
    (tmp_path / "run.py").write_text("print(3)")
    now = command_identity(["python", "run.py"], tmp_path)
    assert changes(identity, now) == ["run.py changed"]
    old = {**now, "versions": {**now["versions"], "transformers": "4.0.0"}}
    assert changes(old, now) == [f"transformers changed (4.0.0 → {now['versions']['transformers']})"]
    assert changes({"command": ["python", "run.py"]}, now) == [
        "it was recorded without its cwd, files, versions (by an older amp_hf)"
    ]
    assert changes(now, {**now, "command": ["python", "run.py", "--x"]}) == [
        "the command changed (python run.py → python run.py --x)"
    ]


def test_a_train_function_is_identified_by_its_source():
    def train_one(request):
        return request.seed

    namespace: dict = {}
    exec("def train_one(request):\n    return request.seed + 1\n", namespace)  # no source file: its code object
    edited = namespace["train_one"]
    assert function_source(train_one) == function_source(train_one)
    assert function_source(train_one) != function_source(edited)
    exec("def train_one(request):\n    return request.seed + 2\n", namespace)
    assert function_source(namespace["train_one"]) != function_source(edited)


def test_amp_hfs_hash_covers_the_code_a_run_executes():
    import amp_hf

    package = Path(amp_hf.__file__).resolve().parent
    names = {str(p.relative_to(package)) for p in training_code(package)}
    assert {"trainer.py", "micro_batch.py", "compare/recording.py"} <= names
    assert not {"compare/report.py", "compare/statistics.py", "compare/identity.py"} & names


def test_the_benchmarks_cache_uses_the_same_identity():
    versions = library_versions()
    code = runner.code_identity()
    assert {k: code[k] for k in versions} == versions and versions["amp_hf"].startswith("0.")
    assert Path(runner.__file__).exists() and len(code["benchmarks"]) == 12
