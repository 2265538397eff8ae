"""amp_hf.compare.evaluation: a command whose own flags say its runs evaluate nothing is refused before anything
trains (the upstream scripts' --do_train without --do_eval or an eval_strategy); flags read as argparse reads them."""

from __future__ import annotations

import sys

import pytest

from amp_hf.compare import CompareError, run_comparison
from amp_hf.compare.evaluation import check_evaluation


@pytest.mark.parametrize(
    "flags, refused",
    [
        (["--do_train"], True),  # the upstream scripts: nothing evaluated, nothing to compare
        (["--do_train", "--do_eval"], False),  # one evaluation after training
        (["--do_train", "--do_ev", "true"], False),  # read as the script's parser reads it (script_flags)
        (["--do-train", "--do_eval", "true", "--do_eval=false"], True),  # the last occurrence wins
        (["--do_train", "--eval_strategy", "epoch"], False),
        (["--do_train", "--do_eval", "--eval_strategy=no"], False),
        (["--do_train", "--eval_strategy", "no"], True),
        (["--eval_strategy", "no", "--do_eval", "False"], True),
        ([], False),  # the flags say nothing (a script that evaluates on its own): not refused
        (["config.json"], False),
    ],
)
def test_a_command_that_evaluates_nothing_is_refused(flags, refused):
    command = ["python", "run_classification.py", "--model_name_or_path", "m", *flags]
    if refused:
        with pytest.raises(CompareError, match=r"evaluate nothing.*Add --do_eval"):
            check_evaluation(command)
    else:
        check_evaluation(command)


def test_the_comparison_is_refused_before_anything_runs(tmp_path):
    command = [sys.executable, "-c", "raise SystemExit('never run')", "--do_train", "--output_dir", "x"]
    with pytest.raises(CompareError, match="evaluate nothing"):
        run_comparison(command, seeds=[0, 1], candidates=["cnn_long_noisy"], output_dir=tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "runs").exists()
