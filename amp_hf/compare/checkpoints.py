"""What a finished run keeps on disk: `--keep_checkpoints {all,best,none}`, applied once the run has succeeded and
before its done-marker is written. compare's report reads nothing from checkpoints (only trainer_state.json, the
`*_results.json` files and compare_run.json), so `none` loses nothing it needs; the final model your script saves
with `save_model()` in the run folder itself is never touched.

- `all`: every `checkpoint-*` folder the Trainer left (its own `save_total_limit` applies), as before;
- `best`: only the one trainer_state.json names as `best_model_checkpoint` (none when the run recorded no best);
- `none`: no `checkpoint-*` folder.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .candidates import CompareError
from .recording import RUN_FILE

KEEP_CHOICES = ("all", "best", "none")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def check_keep(keep: str) -> str:
    if keep not in KEEP_CHOICES:
        raise CompareError(f"--keep_checkpoints must be one of {', '.join(KEEP_CHOICES)}, got {keep!r}")
    return keep


def _best_name(folder: Path) -> str | None:
    try:
        best = json.loads((folder / "trainer_state.json").read_text()).get("best_model_checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(best).name if isinstance(best, str) and best else None


def prune_checkpoints(folder: Path, keep: str) -> list[Path]:
    """Deletes the checkpoints `keep` does not keep; returns what it deleted. The run's training arguments survive
    (a script without the recorder has them only inside its checkpoints): the latest checkpoint's
    training_args.bin is copied into the run folder first when the folder has neither it nor compare_run.json."""
    if keep == "all":
        return []
    checkpoints = sorted(
        (p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)),
        key=lambda p: int(_CHECKPOINT.match(p.name).group(1)),
    )
    kept = _best_name(folder) if keep == "best" else None
    doomed = [p for p in checkpoints if p.name != kept]
    if doomed and not (folder / "training_args.bin").exists() and not (folder / RUN_FILE).exists():
        with_args = [p / "training_args.bin" for p in checkpoints if (p / "training_args.bin").is_file()]
        if with_args:
            shutil.copy2(with_args[-1], folder / "training_args.bin")
    for path in doomed:
        shutil.rmtree(path)
    return doomed
