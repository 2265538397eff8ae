"""`python -m amp_hf.compare`: the command line of `run_comparison`.

    python -m amp_hf.compare --seeds 0 1 2 --candidates cnn_long_noisy '{"amp_norm": "global", "amp_epsilon": 0.05}' \
        --output_dir cmp [--parallel 2] [--gpus_per_run 2] [--executor submitit --executor_params timeout_min=600] \
        [--keep_checkpoints none] [--retries 1] [--metric accuracy] [--greater_is_better true] -- python train.py ...
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from .candidates import CompareError
from .checkpoints import KEEP_CHOICES
from .comparison import run_comparison
from .executors import EXECUTORS, parse_executor_params
from .plan import ComparisonStopped
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
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="runs at a time (default: devices ÷ --gpus_per_run on a GPU host, 1 on CPU; CPU threads are split)",
    )
    p.add_argument(
        "--gpus_per_run",
        type=int,
        default=None,
        help="devices each run gets (default: the launcher's process count, e.g. accelerate launch --num_processes; "
        "1 for python)",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: processes on this machine; submitit: one job per run (SLURM where present, else local)",
    )
    p.add_argument(
        "--executor_params",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="submitit's update_parameters, e.g. slurm_partition=gpu timeout_min=600 gpus_per_node=1",
    )
    p.add_argument(
        "--keep_checkpoints",
        choices=KEEP_CHOICES,
        default="all",
        help="checkpoint-* folders kept once a run is done (the report needs none of them)",
    )
    p.add_argument("--retries", type=int, default=0, help="times a failed run is tried again (default 0)")
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
            gpus_per_run=args.gpus_per_run,
            executor=args.executor,
            executor_params=parse_executor_params(args.executor_params),
            keep_checkpoints=args.keep_checkpoints,
            retries=args.retries,
        )
    except CompareError as error:
        print(f"amp_hf.compare: error: {error}", file=sys.stderr)
        return 2
    except ComparisonStopped as stop:
        print(f"[compare] {stop}", file=sys.stderr, flush=True)
        return 128 + int(stop.signum)
    except KeyboardInterrupt:  # before or after the runs: no run was in flight
        print("[compare] stopped, no run in flight; rerun to resume", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    for line in console_lines(report):
        print(line)
    print(f"report: {args.output_dir}/{MARKDOWN_FILE}, {args.output_dir}/{JSON_FILE}")
    return 1 if report.missing else 0
