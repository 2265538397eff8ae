"""amp_hf.compare.compare: the notebook form, a train function per run in this process. The script never saves
anything (the recorder writes the run folders) and evaluates a dict eval_dataset {"validation", "test"}, so the
headline is the test loss logged at the best validation step and the final one the last logged."""

from __future__ import annotations

import json

import pytest
from compare_script import ScriptArguments, train

from amp_hf import AMPTrainingArguments
from amp_hf.compare import RUN_ENVIRONMENT, RunRequest, compare

calls: list[tuple[str, int]] = []


def train_one(request: RunRequest) -> None:
    calls.append((request.candidate, request.seed))
    if request.candidate == "broken":
        raise RuntimeError("this candidate's run breaks")
    args = AMPTrainingArguments(
        output_dir=str(request.output_dir), seed=request.seed, num_train_epochs=3, per_device_train_batch_size=16,
        learning_rate=0.05, eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="validation_loss", report_to="none", use_cpu=True,
        disable_tqdm=True, **request.amp_arguments,
    )  # fmt: skip
    train(ScriptArguments(test_evaluation=False), args, save=False)


def test_compare_in_process(tmp_path):
    report = compare(
        train_one, seeds=[0, 1], candidates=["cnn_long_noisy", 'broken={"amp_epsilon": 0.1}'], output_dir=tmp_path
    )
    assert RUN_ENVIRONMENT not in __import__("os").environ  # restored after each run
    assert sorted(calls) == sorted([(c, s) for c in ("erm", "cnn_long_noisy", "broken") for s in (0, 1)])
    data = json.loads((tmp_path / "compare.json").read_text())
    assert data["source"] == "test" and data["metric"] == "loss" and data["early_stopping"]
    assert [m["candidate"] for m in data["missing"]] == ["broken", "broken"]
    assert "this candidate's run breaks" in data["missing"][0]["log_tail"]
    assert data["seeds"] == [0, 1]  # broken has no run: it is left out, the others are compared
    assert data["candidates"][2]["values"] == {} and any("broken has no finished run" in w for w in data["warnings"])
    report = compare(train_one, seeds=[0, 1], candidates=["cnn_long_noisy"], output_dir=tmp_path)
    assert len(calls) == 6 + 0  # finished runs reused (broken is no longer asked for)
    assert report.seeds == [0, 1] and not report.missing
    for entry in report.to_dict()["candidates"]:
        for seed in (0, 1):
            state = json.loads((tmp_path / "runs" / entry["name"] / f"seed-{seed}" / "trainer_state.json").read_text())
            tests = {e["step"]: e["eval_test_loss"] for e in state["log_history"] if "eval_test_loss" in e}
            assert entry["values"][str(seed)] == pytest.approx(tests[state["best_global_step"]])
            assert entry["final"]["values"][str(seed)] == pytest.approx(tests[max(tests)])
    assert report.candidate("cnn_long_noisy").headline.difference.n == 2
