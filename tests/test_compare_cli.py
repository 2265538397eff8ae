"""`python -m amp_hf.compare`: its arguments and errors (in this process; the end-to-end run of the module is in
test_compare_command.py, on that file's finished comparison)."""

from __future__ import annotations

import pytest

from amp_hf.compare import cli
from amp_hf.compare.candidates import parse_candidates
from amp_hf.compare.cli import main, parser
from amp_hf.compare.report import build_report


def test_arguments_and_the_command_after_the_separator():
    args = parser().parse_args(["--seeds", "0", "1", "--candidates", "sam", "{}", "--output_dir", "x",
                                "--greater_is_better", "false", "--parallel", "2"])  # fmt: skip
    assert args.seeds == [0, 1] and args.candidates == ["sam", "{}"] and args.greater_is_better is False
    assert args.parallel == 2 and args.metric is None and args.margin is None
    assert (
        parser().parse_args(["--seeds", "0", "--candidates", "x", "--output_dir", "x", "--margin", "0.01"]).margin
        == 0.01
    )
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


def test_the_console_shows_each_verdict_and_the_warnings(tmp_path, capsys, monkeypatch):
    """What main prints after the runs: a line per candidate (verdict, raw interval, wins, time ratio) and every
    warning of the report, not only compare.md's."""
    from test_compare_report import write_run

    records = {(n, s): write_run(tmp_path, n, s, [0.5, 0.6 + s / 10 + (n == "x") / 50], best_step=None, early=False)
               for n in ("erm", "x") for s in range(3)}  # fmt: skip
    report = build_report(parse_candidates(['x={"amp_epsilon": 0.1}']), [0, 1, 2], records, [])
    monkeypatch.setattr(cli, "run_comparison", lambda *args, **kwargs: report)
    assert main(["--seeds", "0", "1", "2", "--candidates", "x", "--output_dir", str(tmp_path), "--", "python"]) == 0
    out = capsys.readouterr().out
    assert "  x: better — difference +2.0 points, raw 95% CI [+2.0, +2.0]" not in out  # a zero spread is no proof
    assert "  x: no evidence — difference +2" in out and "wins 3/3" in out and "time 1.00× ERM" in out
    assert "warning: no test split" in out and "warning: 6 of 6 runs did not early-stop" in out
