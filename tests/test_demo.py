"""examples/demo.py end to end on a tiny slice: both runs, the side-by-side, the results file and the plot."""

import json
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import demo  # noqa: E402

from amp_hf.tasks.data import fashion_mnist_arrays  # noqa: E402


def test_demo_writes_both_runs_with_the_library_preset(tmp_path, capsys):
    results = demo.main(["--seed", "3", "--train_size", "64", "--epochs", "2", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert saved["erm_test_error"] == results["erm_test_error"] and saved["amp_test_error"] == results["amp_test_error"]
    for key in ("erm_test_error", "amp_test_error"):
        assert 0 <= saved[key] <= 100  # percent
    erm, amp = saved["runs"]["ERM"], saved["runs"]["AMP"]
    assert len(erm["test_error_per_epoch"]) == len(amp["test_error_per_epoch"]) == 2
    assert len(erm["train_loss_per_epoch"]) == len(amp["train_loss_per_epoch"]) == 2
    assert saved["preset"] == "cnn_long_noisy" and (tmp_path / "demo.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "test error (%)" in printed and "final training loss" in printed and "training time" in printed


def test_same_seed_gives_the_same_data_and_wrong_labels():
    (train_a, test_a), (train_b, test_b) = (demo.fashion_mnist_subset(7, 200, 50) for _ in range(2))
    assert train_a["labels"].equal(train_b["labels"]) and train_a["pixel_values"].equal(train_b["pixel_values"])
    assert test_a["labels"].equal(test_b["labels"])
    other, _ = demo.fashion_mnist_subset(8, 200, 50)
    assert not other["pixel_values"].equal(train_a["pixel_values"])


def test_about_a_fifth_of_the_training_labels_are_wrong():
    import numpy as np

    noisy, _ = demo.fashion_mnist_subset(11, 2000, 10)
    rng = np.random.default_rng(11)  # the draw demo.py makes before the noise: which images
    _, labels = fashion_mnist_arrays("train")
    clean = labels[rng.choice(len(labels), 2000, replace=False)]
    wrong = float((noisy["labels"].numpy() != clean).mean())
    assert 0.17 < wrong < 0.23
