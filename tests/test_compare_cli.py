"""`python -m amp_hf.compare`: its arguments and errors (in this process; the end-to-end run of the module is in
test_compare_command.py, on that file's finished comparison)."""

from __future__ import annotations

import pytest

from amp_hf.compare.cli import main, parser


def test_arguments_and_the_command_after_the_separator():
    args = parser().parse_args(["--seeds", "0", "1", "--candidates", "sam", "{}", "--output_dir", "x",
                                "--greater_is_better", "false", "--parallel", "2"])  # fmt: skip
    assert args.seeds == [0, 1] and args.candidates == ["sam", "{}"] and args.greater_is_better is False
    assert args.parallel == 2 and args.metric is None
    with pytest.raises(SystemExit):
        parser().parse_args(["--seeds", "0", "--candidates", "x", "--output_dir", "x", "--greater_is_better", "maybe"])


def test_errors_name_the_flag_and_exit_2(tmp_path, capsys):
    base = ["--seeds", "0", "1", "--output_dir", str(tmp_path)]
    assert main([*base, "--candidates", "cnn_short", "--", "python", "train.py"]) == 2
    assert "'cnn_short' is neither a preset" in capsys.readouterr().err
    assert main([*base, "--candidates", '{"amp_epsilon": 0.1}', "--", "python", "t.py", "--amp_preset", "x"]) == 2
    assert "the command sets --amp_preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--candidates", "reference"])  # no command after --
    assert "give the training command after --" in capsys.readouterr().err


def test_help_reads_as_written(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "95% confidence interval" in text and "%%" not in text and "-- COMMAND" in text
