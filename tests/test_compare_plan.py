"""How compare runs its runs (amp_hf.compare.plan and attempt), on a fake training command that writes a finished
run's files in a fraction of a second (tests/compare_fake_script.py): seed-major order, retries and the done-marker,
--keep_checkpoints, a run killed by a signal, the shell-quoted command line, the first console line, and the
in-process form's SystemExit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from amp_hf.compare import CompareError, compare, run_comparison
from amp_hf.compare.attempt import exit_reason
from amp_hf.compare.runs import DONE_FILE

FAKE = [sys.executable, str(Path(__file__).with_name("compare_fake_script.py"))]
CANDIDATE = '{"amp_epsilon": 0.1}'
NAME = "eps0.1"


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_runs_go_seed_major_and_the_first_line_says_what_will_train(tmp_path, capsys):
    record = tmp_path / "record.jsonl"
    run_comparison(
        FAKE, seeds=[0, 1, 2], candidates=[CANDIDATE], output_dir=tmp_path / "cmp", env={"FAKE_RECORD": str(record)}
    )
    starts = [(bool(e["amp"].get("amp_epsilon")), e["seed"]) for e in _events(record) if e["event"] == "start"]
    assert starts == [(False, 0), (True, 0), (False, 1), (True, 1), (False, 2), (True, 2)]
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("[compare] 6 runs to train, 1 at a time on CPU; logs: ")
    assert f"{tmp_path / 'cmp'}/runs/<candidate>/seed-<seed>.log" in first


def test_a_failed_run_is_retried_and_the_marker_counts_its_attempts(tmp_path):
    out = tmp_path / "cmp"
    env = {"FAKE_FAIL_FIRST": str(tmp_path / "failed")}
    report = run_comparison(FAKE, seeds=[0], candidates=[CANDIDATE], output_dir=out, env=env, retries=1)
    assert not report.missing
    for name in ("erm", NAME):
        done = json.loads((out / "runs" / name / "seed-0" / DONE_FILE).read_text())
        assert done["attempts"] == 2 and done["devices"] == [] and done["seed"] == 0
    report = run_comparison(FAKE, seeds=[0, 5], candidates=[CANDIDATE], output_dir=tmp_path / "b", env=env)
    assert [(m["seed"], m["attempts"]) for m in report.missing] == [(5, 1), (5, 1)]  # no retries: failed, reported
    assert all("exited with status 3" in m["reason"] for m in report.missing)
    with pytest.raises(CompareError, match="--retries must be an integer >= 0"):
        run_comparison(FAKE, seeds=[0], candidates=[CANDIDATE], output_dir=out, retries=-1)


KEPT = [("none", []), ("best", ["checkpoint-1"]), ("all", ["checkpoint-1", "checkpoint-2"])]


@pytest.mark.parametrize("keep, left", KEPT)
def test_keep_checkpoints(tmp_path, keep, left):
    out = tmp_path / "cmp"
    report = run_comparison(
        FAKE, seeds=[0], candidates=[CANDIDATE], output_dir=out, env={"FAKE_CHECKPOINTS": "2"}, keep_checkpoints=keep
    )
    for name in ("erm", NAME):
        folder = out / "runs" / name / "seed-0"
        assert sorted(p.name for p in folder.glob("checkpoint-*")) == left
        assert (folder / DONE_FILE).is_file()
    assert report.candidate(NAME).headline.values == {0: pytest.approx(0.9)}  # the report needs no checkpoint


def test_bad_keep_checkpoints_is_refused(tmp_path):
    with pytest.raises(CompareError, match="--keep_checkpoints must be one of all, best, none"):
        run_comparison(FAKE, seeds=[0], candidates=[CANDIDATE], output_dir=tmp_path, keep_checkpoints="last")
    assert not (tmp_path / "runs").exists()


def test_a_run_killed_by_a_signal_says_which_and_its_log_line_is_shell_quoted(tmp_path):
    out = tmp_path / "cmp"
    command = [*FAKE, "--run_name", "two words"]
    report = run_comparison(command, seeds=[0, 1], candidates=[CANDIDATE], output_dir=out, env={"FAKE_KILL_SELF": "1"})
    reasons = {(m["candidate"], m["seed"]): m["reason"] for m in report.missing}
    assert reasons == {(c, 1): "it killed by signal 9 (SIGKILL: out of memory?)" for c in ("erm", NAME)}
    log = (out / "runs" / "erm" / "seed-0" / "compare.log").read_text().splitlines()[0]
    assert log.startswith("$ ") and "--run_name 'two words' --output_dir" in log
    assert exit_reason(137) == "exited with status 137 (a shell's 128 + signal 9: SIGKILL: out of memory?)"
    assert exit_reason(-15) == "killed by signal 15 (SIGTERM)" and exit_reason(1) == "exited with status 1"


def test_a_system_exit_from_train_fn_is_a_failed_run(tmp_path):
    calls = []

    def train(request):
        calls.append((request.candidate, request.seed))
        if request.candidate != "erm":
            raise SystemExit(2)  # e.g. argparse inside the function
        state = {"log_history": [{"eval_loss": 1.0 + request.seed, "step": 1}, {"train_runtime": 1.0, "step": 1}]}
        (request.output_dir / "trainer_state.json").write_text(json.dumps(state))

    report = compare(train, seeds=[0, 1], candidates=[CANDIDATE], output_dir=tmp_path)
    assert calls == [("erm", 0), (NAME, 0), ("erm", 1), (NAME, 1)]  # seed-major; the comparison went on
    assert [(m["candidate"], m["reason"]) for m in report.missing] == [(NAME, "train_fn raised SystemExit(2)")] * 2
