"""The example scripts end to end, offline, on small slices of their real default model and data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import torchrun_two_processes

import amp_hf.tasks.data
from amp_hf.presets import get_preset

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import image_classification  # noqa: E402
import text_classification  # noqa: E402

FAST = "--use_cpu --report_to none --save_strategy no --disable_tqdm true --logging_steps 1 --max_steps 2".split()
FAST += ["--amp_preset", "reference"]  # AMP's reference defaults; the family presets: test_family_presets
TINY_VIT = "--vit_hidden_size 32 --vit_num_layers 1 --vit_num_heads 2 --per_device_train_batch_size 16".split()


def amp_logs(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "amp_clean_loss" in e]


def test_text_example_on_minilm_and_rotten_tomatoes(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--max_train_samples", "32", "--max_eval_samples", "16"]
    trainer, test = text_classification.main(argv + FAST + ["--per_device_train_batch_size", "8"])
    assert type(trainer.model).__name__ == "BertForSequenceClassification"
    assert trainer.model.config.id2label == {0: "rotten", 1: "fresh"}
    assert trainer.model.config.num_hidden_layers == 6  # the real pretrained MiniLM-L6, not a stand-in
    saved = json.loads((tmp_path / "test_results.json").read_text())
    assert {"test_accuracy", "test_f1"} <= saved.keys() and saved["test_accuracy"] == test["test_accuracy"]
    assert (tmp_path / "eval_results.json").exists()
    assert len(amp_logs(trainer)) == 2 and all(e["amp_delta_norm"] > 0 for e in amp_logs(trainer))


@pytest.mark.parametrize("model_type", ["vit", "resnet"])
def test_image_example_on_fashion_mnist(tmp_path, model_type):
    argv = ["--output_dir", str(tmp_path), "--max_train_samples", "64", "--max_eval_samples", "32"]
    trainer, test = image_classification.main(argv + FAST + TINY_VIT + ["--model_type", model_type])
    expected = {"vit": "ViTForImageClassification", "resnet": "ResNetForImageClassification"}[model_type]
    assert type(trainer.model).__name__ == expected
    assert trainer.model.config.num_labels == 10
    assert json.loads((tmp_path / "test_results.json").read_text())["test_accuracy"] == test["test_accuracy"]
    assert len(amp_logs(trainer)) == 2


def test_erm_switch_trains_with_the_plain_trainer_and_sharpness_flag_measures(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--max_train_samples", "32", "--max_eval_samples", "16", "--erm"]
    trainer, _ = image_classification.main(argv + FAST + TINY_VIT + ["--sharpness"])
    assert type(trainer).__name__ == "Trainer"
    assert not amp_logs(trainer)
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["eval_sharpness_hessian"] > 0 and saved["eval_sharpness_amp"] > 0


def test_text_example_on_user_csv_files(tmp_path):
    lines = [f"review number {i} was {'good' if i % 2 else 'bad'},{i % 2}" for i in range(24)]
    rows = "sentence,sentiment\n" + "\n".join(lines) + "\n"
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "val.csv").write_text(rows)
    argv = ["--output_dir", str(tmp_path / "out"), "--train_file", str(tmp_path / "train.csv")]
    argv += ["--validation_file", str(tmp_path / "val.csv"), "--text_column", "sentence", "--label_column", "sentiment"]
    trainer, test = text_classification.main(argv + FAST + ["--test_fraction", "0.25"])
    assert len(amp_logs(trainer)) == 2
    # the test split is the held-out quarter of train.csv: 6 rows, so the accuracy is a whole number of sixths
    assert test["test_accuracy"] * 6 == pytest.approx(round(test["test_accuracy"] * 6), abs=1e-9)
    assert json.loads((tmp_path / "out" / "test_results.json").read_text())["test_accuracy"] == test["test_accuracy"]


def test_data_file_without_the_columns_names_found_and_wanted(tmp_path):
    (tmp_path / "train.json").write_text('{"review": "fine", "stars": 1}\n{"review": "bad", "stars": 0}\n')
    argv = ["--output_dir", str(tmp_path), "--train_file", str(tmp_path / "train.json")] + FAST
    with pytest.raises(ValueError, match=r"found \['review', 'stars'\], wanted \['text', 'label'\]"):
        text_classification.main(argv)


def test_unknown_model_and_dataset_say_so(tmp_path):
    argv = ["--output_dir", str(tmp_path), "--max_train_samples", "8"] + FAST
    with pytest.raises(ValueError, match=r"--model_name_or_path 'no/such-model' is neither a local model folder"):
        text_classification.main([*argv, "--model_name_or_path", "no/such-model"])
    with pytest.raises(ValueError, match=r"--dataset_name 'no/such-dataset' could not be loaded"):
        image_classification.main([*argv, "--dataset_name", "no/such-dataset"])


def test_missing_offline_asset_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(amp_hf.tasks.data, "FASHION_MNIST_DIR", str(tmp_path / "absent"))  # where the script reads it
    with pytest.raises(RuntimeError, match="apt-get install dataset-fashion-mnist"):
        image_classification.main(["--output_dir", str(tmp_path), *FAST])


def test_image_example_with_two_processes(tmp_path):
    """torchrun with two CPU processes (gloo): the script runs unchanged and AMP logs from the DDP run."""
    script = [str(EXAMPLES / "image_classification.py"), "--output_dir", str(tmp_path), "--max_train_samples", "64"]
    script += ["--max_eval_samples", "32", "--ddp_backend", "gloo", *FAST, *TINY_VIT]
    done = torchrun_two_processes(*script, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("RESULT ") == 1  # printed by rank 0 only
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert any("amp_clean_loss" in e for e in state["log_history"])
    assert state["global_step"] == 2


@pytest.mark.parametrize(
    ("script", "preset", "extra"),
    [
        (text_classification, "text_finetune", ["--per_device_train_batch_size", "8"]),
        (image_classification, "vit_from_scratch", TINY_VIT),
        (image_classification, "cnn", TINY_VIT + ["--model_type", "resnet"]),
        (
            image_classification,
            "cnn_long_noisy",
            TINY_VIT + ["--model_type", "resnet", "--amp_preset", "cnn_long_noisy"],
        ),
    ],
)
def test_family_presets_without_amp_flags(tmp_path, script, preset, extra):
    """Without --amp_* flags the examples train with the library preset for their family (the studies'
    recommendation), or the preset named by --amp_preset; an explicit --amp_* flag wins over a named preset, and
    without a named preset any --amp_* flag means the flags and the reference defaults alone (README)."""
    base = ["--output_dir", str(tmp_path), "--max_train_samples", "32", "--max_eval_samples", "16"]
    fast = FAST[:-2] + ["--max_steps", "2"]  # FAST without its --amp_preset reference
    trainer, _ = script.main(base + fast + extra)
    assert trainer.args.amp_preset == preset
    assert {k: getattr(trainer.args, k) for k in get_preset(preset)} == get_preset(preset)
    trainer, _ = script.main(base + fast + extra + ["--amp_epsilon", "0.123"])
    assert trainer.args.amp_epsilon == 0.123
    named = "--amp_preset" in extra
    assert trainer.args.amp_inner_steps == 1 and trainer.args.amp_preset == (preset if named else None)
    assert trainer.args.amp_ascent_fraction == (0.125 if named else 1.0)


def test_pretrained_image_model_without_amp_flags_is_fine_tuned_with_erm(tmp_path):
    """A --model_name_or_path (here a tiny ViT saved to disk) never gets the reference defaults, which collapse
    fine-tuning: without --amp_* flags it takes the 'finetune' preset, plain ERM."""
    from transformers import ViTConfig, ViTForImageClassification

    from amp_hf.tasks.models import image_processor  # transformers 4.57 and 5.x name the class differently

    folder = tmp_path / "pretrained"
    config = ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32, num_labels=10)  # fmt: skip
    ViTForImageClassification(config).save_pretrained(folder)
    image_processor(channels=1).save_pretrained(folder)
    argv = ["--output_dir", str(tmp_path / "out"), "--max_train_samples", "16", "--max_eval_samples", "8"]
    argv += ["--model_name_or_path", str(folder), "--per_device_train_batch_size", "8"] + FAST[:-2]
    trainer, _ = image_classification.main(argv)
    assert trainer.args.amp_preset == "finetune" and not trainer.args.amp_config.enabled
    assert not amp_logs(trainer)
