"""The README's held-out claim for cnn_long_noisy, given more seeds (issue 30: a claim that does not pass the
library's rule is said to be within noise, or given more seeds).

PROTOCOL (fixed before the runs, December 2026)
- The claim: cnn_long_noisy@1 (reference defaults, amp_ascent_fraction = 1/8) against early-stopped ERM on the
  held-out check task cnn_fmnist_noisy_long (Fashion-MNIST 5k / 2k validation / 10k test, 20% of the training and
  validation labels wrong, test labels clean, 40 epochs; the frontier study's model, optimizer and budget). With
  seeds 0-2 it was −1.30 ± 0.57 points, interval [−2.71, +0.12]: 'no evidence' by the rule.
- Runs: ERM and f = 1/8, seeds 0-4, all trained by this code on one machine (the frontier study's seeds 0-2 came
  from an older code on another machine; its per-seed numbers are not mixed with these). Nothing is chosen here:
  the setting is cnn_long_noisy@1 unchanged.
- Reported: test error of the best-validation checkpoint (early stopping on the noisy validation split, the
  headline) and of the final weights, AMP − ERM per seed, judged together (Holm over the two baselines) by the
  library's rule (amp_hf.compare.statistics). Whatever the verdict, it replaces the three-seed row in README and
  docs/evidence.md. Training times are not reported: the runs shared the machine with other work.

    python -m benchmarks.seeds_check                 # 10 runs, ~30 min on 2 idle cores
    python -m benchmarks.seeds_check --cached-only   # the report from the recorded runs

Records in benchmarks/results/records/seeds_check.jsonl; writes benchmarks/results/seeds_check.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .methods import EIGHTH, ERM
from .reports import command
from .runner import RESULTS, RUNS, RunStore, Scheduler, Spec
from .stats import paired_family

CHECK = "cnn_fmnist_noisy_long"
SEEDS = (0, 1, 2, 3, 4)
BASELINES = {"best-validation checkpoint": "test_error", "final weights": "final_test_error"}


def judged(done: dict[Spec, dict[str, Any]]) -> dict[str, Any]:
    """AMP − ERM at both baselines over the seeds both methods finished, judged as one family."""
    pairs = {}
    for baseline, field in BASELINES.items():
        values = {m.name: {s: done[Spec(CHECK, m, s)][field] for s in SEEDS if Spec(CHECK, m, s) in done}
                  for m in (ERM, EIGHTH)}  # fmt: skip
        pairs[baseline] = (values[ERM.name], values[EIGHTH.name])
    return {"task": CHECK, "setting": EIGHTH.name, "seeds": list(SEEDS), "paired": paired_family(pairs)}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# cnn_long_noisy@1 against ERM on {CHECK}, seeds {SEEDS[0]}-{SEEDS[-1]}",
        "",
        "Test error, AMP − ERM in points; verdicts by the library's rule, Holm over the two baselines.",
        "",
        "| baseline | per seed | mean ± std | 95% interval | wins | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for baseline, p in report["paired"].items():
        seeds = ", ".join(f"{100 * d:+.2f}" for d in p["differences"])
        ci = "—" if p["ci95"] is None else f"[{100 * p['ci95'][0]:+.2f}, {100 * p['ci95'][1]:+.2f}]"
        adjusted = "—" if p["p_adjusted"] is None else f"{p['p_adjusted']:.3g}"
        lines.append(
            f"| {baseline} | {seeds} | {100 * p['mean']:+.2f} ± {100 * p['std']:.2f} | {ci} | "
            f"{p['wins']}/{p['n']} | {adjusted} | **{p['verdict']}** |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached-only", action="store_true", help="write the report from recorded runs, train none")
    parser.add_argument("--workers", type=int, default=2)
    cli = parser.parse_args()
    scheduler = Scheduler(cli.workers, RunStore(RUNS / "seeds_check.jsonl"), cached_only=cli.cached_only)
    for seed in SEEDS:  # seed-major: a cut-short run still has paired seeds
        scheduler.add([Spec(CHECK, ERM, seed), Spec(CHECK, EIGHTH, seed)], -seed)
    scheduler.run()
    report = {"command": command("seeds_check"), "protocol": __doc__.split("PROTOCOL", 1)[1].split("\n\n", 1)[0]}
    report.update(judged(scheduler.done))
    report["runs_not_run"] = sorted(f"seed {s.seed} {s.method.name}" for s in scheduler.missing)
    (RESULTS / "seeds_check.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    (RESULTS / "seeds_check.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
