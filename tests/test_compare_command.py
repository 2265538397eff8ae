"""`amp_hf.compare.run_comparison` (the command's twin) on a tiny Trainer script (tests/compare_script.py): ERM and a
JSON candidate on three seeds, two runs at a time, one run failing; the report against the run folders; resuming
after a lost run; and bad input refused before anything trains. One shared comparison (each run is a process)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from amp_hf.compare import CompareError, run_comparison
from amp_hf.compare.command import _script_part, run_environment
from amp_hf.compare.runs import DONE_FILE

SCRIPT = str(Path(__file__).with_name("compare_script.py"))
COMMAND = [
    sys.executable, SCRIPT, "--num_train_epochs", "3", "--per_device_train_batch_size", "16", "--learning_rate", "0.05",
    "--eval_strategy", "epoch", "--save_strategy", "epoch", "--save_total_limit", "1", "--load_best_model_at_end",
    "--metric_for_best_model", "validation_loss", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
]  # fmt: skip
CANDIDATE = '{"amp_norm": "global", "amp_epsilon": 0.05}'
NAME = "global-eps0.05"


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    counter = out / "counter.txt"
    env = {
        "COMPARE_SCRIPT_FAIL": "2/0.05",  # the candidate's seed 2 fails
        "COMPARE_SCRIPT_NO_SAVE_SEED": "1",  # seed 1 never calls save_state / save_metrics: the recorder's files
        "COMPARE_SCRIPT_COUNTER": str(counter),
        "OMP_NUM_THREADS": "1",
    }
    report = run_comparison(
        COMMAND, seeds=[0, 1, 2], candidates=[CANDIDATE], output_dir=out / "cmp", parallel=2, env=env
    )
    return report, out / "cmp", counter, env


def _state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def test_report_fields_match_the_run_folders(comparison):
    report, out, _, _ = comparison
    data = json.loads((out / "compare.json").read_text())
    assert data == json.loads(json.dumps(report.to_dict()))
    assert (out / "compare.md").is_file() and (out / "compare.png").stat().st_size > 0
    assert data["metric"] == "loss" and data["greater_is_better"] is False  # from metric_for_best_model
    assert data["seeds"] == [0, 1] and data["source"] == "test" and data["early_stopping"] is True
    erm, amp = data["candidates"]
    assert erm["name"] == "erm" and erm["settings"] == {"amp_inner_steps": 0} and erm["difference"] is None
    assert amp["name"] == NAME and amp["settings"] == {"amp_norm": "global", "amp_epsilon": 0.05}
    for entry in (erm, amp):
        for seed in (0, 1):
            folder = out / "runs" / entry["name"] / f"seed-{seed}"
            test = json.loads((folder / "test_results.json").read_text())["test_loss"]
            assert entry["values"][str(seed)] == pytest.approx(test)  # the best checkpoint's test loss
            history = _state(folder)["log_history"]
            end = next(i for i, e in enumerate(history) if "train_runtime" in e)
            last = [e["eval_test_loss"] for e in history[:end] if "eval_test_loss" in e][-1]
            assert entry["final"]["values"][str(seed)] == pytest.approx(last)  # the final weights' test loss
            assert 0 < entry["time"]["seconds"][str(seed)] <= history[end]["train_runtime"]
    diffs = [amp["values"][s] - erm["values"][s] for s in ("0", "1")]
    d = amp["difference"]
    assert d["mean"] == pytest.approx(statistics.mean(diffs))
    assert d["std"] == pytest.approx(statistics.stdev(diffs))
    assert d["n"] == 2 and d["wins"] == sum(x < 0 for x in diffs)
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert d["half_width"] == pytest.approx(12.7062 * statistics.stdev(diffs) / 2**0.5, rel=1e-4)
    assert d["verdict"] == "too few seeds" and amp["final"]["difference"]["n"] == 2  # 2 paired seeds
    seconds = {name: entry["time"]["seconds"] for name, entry in (("erm", erm), ("amp", amp))}
    means = {name: statistics.mean(seconds[name][s] for s in ("0", "1")) for name in seconds}
    assert amp["time"]["ratio"] == pytest.approx(means["amp"] / means["erm"])  # a ratio of means


def test_the_candidates_flags_took_effect(comparison):
    _, out, _, _ = comparison
    used = json.loads((out / "runs" / NAME / "seed-0" / "compare_run.json").read_text())["amp_config"]
    assert used["norm"] == "global" and used["epsilon"] == 0.05 and used["inner_steps"] == 1
    erm = json.loads((out / "runs" / "erm" / "seed-0" / "compare_run.json").read_text())["amp_config"]
    assert erm["inner_steps"] == 0


def test_a_script_without_save_state_is_recorded_by_the_trainer(comparison):
    report, out, _, _ = comparison
    for name in ("erm", NAME):
        folder = out / "runs" / name / "seed-1"
        assert (folder / "script_did_not_save").is_file() and not (folder / "all_results.json").exists()
        assert (folder / "trainer_state.json").is_file() and (folder / "test_results.json").is_file()
        assert 1 in report.candidate(name).headline.values


def test_a_failed_run_is_shown_and_the_others_go_on(comparison):
    report, out, counter, _ = comparison
    assert report.missing == [report.missing[0]] and report.missing[0]["candidate"] == NAME
    missing = report.missing[0]
    assert missing["seed"] == 2 and "status 1" in missing["reason"]
    assert "deliberate failure for seed 2" in missing["log_tail"] and Path(missing["log"]).is_file()
    assert not (out / "runs" / NAME / "seed-2" / DONE_FILE).exists()
    assert (out / "runs" / "erm" / "seed-2" / DONE_FILE).exists()  # ERM's seed 2 ran; it is kept for later
    assert len(counter.read_text().splitlines()) == 6
    text = (out / "compare.md").read_text()
    assert "## Missing runs" in text and f"{NAME} seed 2" in text and "left out" in text


def test_a_metric_no_run_recorded_is_refused_listing_the_recorded_ones(comparison):
    _, out, counter, env = comparison
    with pytest.raises(CompareError, match=r"--metric bleu: no run recorded it.*eval_test_accuracy.*test_loss"):
        run_comparison(COMMAND, seeds=[0, 1], candidates=[CANDIDATE], output_dir=out, metric="bleu", env=env)
    assert len(counter.read_text().splitlines()) == 6  # nothing ran again
    with pytest.raises(CompareError, match=r"--metric accuracy: which direction is better is not recorded"):
        run_comparison(COMMAND, seeds=[0, 1], candidates=[CANDIDATE], output_dir=out, metric="accuracy", env=env)
    report = run_comparison(COMMAND, seeds=[0, 1], candidates=[CANDIDATE], output_dir=out, metric="accuracy",
                            greater_is_better=True, env=env)  # fmt: skip
    assert report.greater_is_better is True and report.source == "test"  # the runs chose on loss: the flag says


def test_finished_runs_with_another_command_are_refused_not_mixed(comparison):
    _, out, counter, env = comparison
    with pytest.raises(CompareError, match=r"the command changed .*--weight_decay 0.1\) since erm seed-0"):
        run_comparison([*COMMAND, "--weight_decay", "0.1"], seeds=[0], candidates=[CANDIDATE], output_dir=out, env=env)
    assert len(counter.read_text().splitlines()) == 6


def test_the_module_command_end_to_end(comparison):
    """`python -m amp_hf.compare ... -- <command>` on the finished runs: nothing reruns, the verdict is printed."""
    _, out, counter, env = comparison
    argv = ["--seeds", "0", "1", "--candidates", CANDIDATE, "--output_dir", str(out), "--", *COMMAND]
    done = subprocess.run([sys.executable, "-m", "amp_hf.compare", *argv], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{NAME}: " in done.stdout and "wins" in done.stdout and "compare.md" in done.stdout
    assert "[compare] 0 runs to train, 4 finished runs reused" in done.stderr
    assert len(counter.read_text().splitlines()) == 6


def test_resume_reruns_only_what_is_not_finished(comparison):
    """A lost run (its marker deleted, as a kill mid-run leaves it) and the failed one run again; nothing else."""
    _, out, counter, env = comparison
    kept = out / "runs" / NAME / "seed-0" / DONE_FILE
    mtime = kept.stat().st_mtime_ns
    (out / "runs" / "erm" / "seed-0" / DONE_FILE).unlink()
    env = {k: v for k, v in env.items() if k != "COMPARE_SCRIPT_FAIL"}
    report = run_comparison(COMMAND, seeds=[0, 1, 2], candidates=[CANDIDATE], output_dir=out, parallel=2, env=env)
    runs = counter.read_text().splitlines()[6:]
    assert sorted(runs) == sorted(["0/0.5/tensor 0", "1/0.05/global 2"])  # ERM seed 0, the candidate's seed 2
    assert kept.stat().st_mtime_ns == mtime
    assert report.seeds == [0, 1, 2] and not report.missing and report.candidate(NAME).headline.difference.n == 3


def test_bad_inputs_are_refused_before_anything_runs(tmp_path):
    out = tmp_path / "cmp"
    cases = [
        (dict(candidates=["cnn_short"]), "'cnn_short' is neither a preset"),
        (dict(candidates=['{"lr": 0.1}']), "'lr' is not an amp_\\* argument"),
        (dict(candidates=[CANDIDATE], seeds=[]), "at least one seed"),
        (dict(candidates=[CANDIDATE], seeds=[1, 1]), "lists 1 more than once"),
        (dict(candidates=[CANDIDATE], parallel=0), "--parallel must be an integer >= 1"),
    ]
    for overrides, message in cases:
        with pytest.raises(CompareError, match=message):
            run_comparison(COMMAND, **{"seeds": [0, 1], "output_dir": out, **overrides})
    with pytest.raises(CompareError, match="the command sets --amp_epsilon"):
        run_comparison([*COMMAND, "--amp_epsilon", "0.1"], seeds=[0], candidates=[CANDIDATE], output_dir=out)
    plain = [sys.executable, "-c", "import argparse; argparse.ArgumentParser().parse_args()"]
    with pytest.raises(CompareError, match="does not accept --amp_\\* flags"):
        run_comparison(plain, seeds=[0], candidates=[CANDIDATE], output_dir=out)
    crashing = [sys.executable, "-c", "import a_package_this_environment_lacks"]  # e.g. not the venv's python
    with pytest.raises(CompareError, match=r"(?s)exited with code 1 .*No module named 'a_package_this_environment"):
        run_comparison(crashing, seeds=[0], candidates=[CANDIDATE], output_dir=out)
    assert not (out / "runs").exists()


def test_a_launcher_is_checked_through_its_script():
    python = sys.executable
    assert _script_part(["accelerate", "launch", "--num_processes", "2", "train.py", "--x", "1"]) == [
        python, "train.py", "--x", "1"]  # fmt: skip
    assert _script_part(["torchrun", "--nproc_per_node", "2", "-m", "pkg.train", "--x"]) == [
        python, "-m", "pkg.train", "--x"]  # fmt: skip
    assert _script_part(["python", "-m", "accelerate.commands.launch", "t.py"]) == [python, "t.py"]
    assert _script_part(["python", "train.py"]) is None


def test_parallel_runs_split_threads_and_devices(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    env = run_environment({}, ["1"], port=29600, parallel=2)
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "1" and env["MASTER_PORT"] == "29600"
    assert run_environment({"OMP_NUM_THREADS": "1"}, [], 1, 4)["OMP_NUM_THREADS"] == "1"  # the user's wins
    assert "CUDA_VISIBLE_DEVICES" not in run_environment({}, [], 1, 2)  # a CPU host: nothing to pin
