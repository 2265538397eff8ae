"""`python -m amp_hf.compare`: the command line of `run_comparison`.

    python -m amp_hf.compare --seeds 0 1 2 --candidates cnn_long_noisy '{"amp_norm": "global", "amp_epsilon": 0.05}' \
        --output_dir cmp [--parallel 2] [--metric accuracy] [--greater_is_better true] -- python train.py ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .candidates import CompareError
from .comparison import run_comparison
from .rendering import console_lines
from .report import JSON_FILE, MARKDOWN_FILE


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"--greater_is_better must be true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m amp_hf.compare",
        description="Does AMP (Adversarial Model Perturbation) help my task? Runs your training command once per "
        "(candidate, seed), ERM always included, and compares each candidate with ERM on paired seeds: mean "
        "difference, 95% confidence interval, seeds won, time ratio and a verdict (docs/compare.md).",
        usage="%(prog)s --seeds S [S ...] --candidates C [C ...] --output_dir DIR [options] -- COMMAND ...",
    )
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="the paired seeds (two or more for an interval)")
    p.add_argument(
        "--candidates",
        nargs="+",
        required=True,
        help="preset names (amp_hf.presets), JSON objects of amp_* arguments, or name=JSON; ERM is always compared",
    )
    p.add_argument("--output_dir", required=True, help="the report and the runs (runs/<candidate>/seed-<seed>/)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (CPU threads split; one GPU each)")
    p.add_argument(
        "--metric", default=None, help="the metric name without eval_/test_ (default: metric_for_best_model)"
    )
    p.add_argument(
        "--greater_is_better",
        type=_boolean,
        default=None,
        help="true / false (default: the runs' greater_is_better, else false for loss/error-like names; otherwise "
        "compare refuses to guess)",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="equivalence margin in the metric's units (0.01 = 1 point of accuracy): 'equivalent' when the 95%% "
        "interval lies within ±margin",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        own, command = argv, []
    else:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1 :]
    args = parser().parse_args(own)
    if not command:
        parser().error("give the training command after --, e.g. -- python train.py --do_train ...")
    try:
        report = run_comparison(
            command,
            seeds=args.seeds,
            candidates=args.candidates,
            output_dir=args.output_dir,
            parallel=args.parallel,
            metric=args.metric,
            greater_is_better=args.greater_is_better,
            margin=args.margin,
        )
    except CompareError as error:
        print(f"amp_hf.compare: error: {error}", file=sys.stderr)
        return 2
    for line in console_lines(report):
        print(line)
    print(f"report: {args.output_dir}/{MARKDOWN_FILE}, {args.output_dir}/{JSON_FILE}")
    return 1 if report.missing else 0
