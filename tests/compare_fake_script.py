"""A stand-in for a training script, for the tests of how compare runs runs (devices, locks, executors, stopping):
it accepts the flags compare appends, writes the files a finished Trainer run leaves (trainer_state.json,
eval_results.json, optionally checkpoint-* folders) in well under a second, and imports neither torch nor amp_hf.
Its eval_loss depends only on the seed and the candidate's amp_epsilon, so reports are deterministic.

Steered by environment variables:
- FAKE_RECORD=path: append one JSON line per start and end ({"event", "seed", "amp", "pid", "ppid", "devices",
  "port", "time", "argv"});
- FAKE_SLEEP=seconds: train that long (in slices, so a stop ends it promptly);
- FAKE_CHECKPOINTS=n: leave checkpoint-1..n, the best being checkpoint-1;
- FAKE_FAIL_FIRST=dir: fail (exit 3) the first time each (seed, amp) runs, marking it in dir;
- FAKE_KILL_SELF=seed: that seed's run kills itself with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

if "--help" in sys.argv:
    print("usage: fake [--output_dir D] [--seed S] [--amp_inner_steps N] [--amp_preset P] [--amp_epsilon E] ...")
    sys.exit(0)

args: dict[str, str] = {}
words = sys.argv[1:]
for i, word in enumerate(words):
    if word.startswith("--") and i + 1 < len(words) and not words[i + 1].startswith("--"):
        args[word[2:]] = words[i + 1]
out, seed = Path(args["output_dir"]), int(args["seed"])
amp = {k: v for k, v in args.items() if k.startswith("amp_")}
record = os.environ.get("FAKE_RECORD")


def note(event: str) -> None:
    if record:
        line = {
            "event": event, "seed": seed, "amp": amp, "pid": os.getpid(), "ppid": os.getppid(), "time": time.time(),
            "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "port": os.environ.get("MASTER_PORT"), "argv": words,
        }  # fmt: skip
        with open(record, "a") as f:
            f.write(json.dumps(line) + "\n")


note("start")
if os.environ.get("FAKE_KILL_SELF") == str(seed):
    os.kill(os.getpid(), signal.SIGKILL)
fail_dir = os.environ.get("FAKE_FAIL_FIRST")
if fail_dir:
    marker = Path(fail_dir) / f"{seed}-{'-'.join(f'{k}={v}' for k, v in sorted(amp.items()))}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        print("deliberate first failure")
        sys.exit(3)
deadline = time.time() + float(os.environ.get("FAKE_SLEEP", "0"))
while time.time() < deadline:
    time.sleep(0.05)
out.mkdir(parents=True, exist_ok=True)
loss = 1.0 + 0.01 * seed - (0.1 if "amp_epsilon" in amp else 0.0)
checkpoints = int(os.environ.get("FAKE_CHECKPOINTS", "0"))
for step in range(1, checkpoints + 1):
    (out / f"checkpoint-{step}").mkdir()
    (out / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"0" * 1000)
state = {
    "log_history": [{"eval_loss": loss, "step": 1, "epoch": 1.0}, {"train_runtime": 0.5, "step": 1, "epoch": 1.0}],
    "best_metric": loss,
    "best_global_step": 1,
    "best_model_checkpoint": str(out / "checkpoint-1") if checkpoints else None,
}
(out / "trainer_state.json").write_text(json.dumps(state))
(out / "eval_results.json").write_text(json.dumps({"eval_loss": loss, "epoch": 1.0}))
note("end")
