"""examples/text_classification_no_trainer.py (a plain Accelerate loop with amp_hf.AMP), offline, on one process.

Its two-process run is part of `loop_worker.py`'s launch (`test_loop.py`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState
from accelerate_loop import NO_TRAINER_SMOKE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import text_classification_no_trainer


@pytest.fixture
def fresh_accelerate_state():
    """The script builds its own `Accelerator`: accelerate's shared state is reset before and after it."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_no_trainer_example_trains_minilm_with_amp(tmp_path, capsys, fresh_accelerate_state):
    results = text_classification_no_trainer.main([*NO_TRAINER_SMOKE, "--output_dir", str(tmp_path)])
    assert results["train_steps"] == 2 and results["amp_steps"] == 2 and results["amp_skipped"] == 0
    assert results["amp_delta_norm"] > 0 and 0 < results["amp_clean_loss"] < results["train_loss"]  # L(θ) < L(θ + Δ)
    assert 0 <= results["eval_accuracy"] <= 1
    assert json.loads((tmp_path / "all_results.json").read_text()) == results
    assert "RESULT " in capsys.readouterr().out
