"""What both example scripts share: arguments, data-file loading and checks, splits, metrics, the run itself.

The scripts follow the Hugging Face example-script conventions (HfArgumentParser over the script's arguments and the
training arguments, `--model_name_or_path`, `--dataset_name`, `--train_file`, `--max_train_samples`, ...), so moving
an existing script over is a matter of swapping `Trainer` for `AMPTrainer` and `TrainingArguments` for
`AMPTrainingArguments`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset
from transformers import HfArgumentParser, Trainer, set_seed

from amp_hf import AMPTrainer, AMPTrainingArguments
from amp_hf.sharpness import SharpnessCallback
from amp_hf.tasks.data import holdout_splits, missing_asset  # noqa: F401 - missing_asset: kept importable here

logger = logging.getLogger(__name__)

METRIC_MODULE = Path(__file__).resolve().parent / "metrics" / "accuracy_f1"


@dataclass
class DataArguments:
    """Data and run options both examples accept (each script adds its own columns and model options)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A local model folder or a Hub name (needs network). Default: see the script."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A data set on the Hugging Face Hub (needs network). Default: offline data."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub data set's configuration."})
    train_file: str | None = field(default=None, metadata={"help": "A csv or json(l) file of training data."})
    validation_file: str | None = field(default=None, metadata={"help": "A csv or json(l) file of validation data."})
    test_file: str | None = field(default=None, metadata={"help": "A csv or json(l) file of test data."})
    label_column: str = field(default="label", metadata={"help": "The column holding the class label."})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the training data held out for validation when none is given."}
    )
    test_fraction: float = field(
        default=0.1, metadata={"help": "Share of the training data held out for testing when no test set is given."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training examples."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many validation and test examples."}
    )
    erm: bool = field(
        default=False,
        metadata={"help": "Train with the plain transformers.Trainer (ERM) instead of AMPTrainer, for comparison."},
    )
    sharpness: bool = field(
        default=False,
        metadata={
            "help": "Measure flatness at every evaluation (amp_hf.sharpness.SharpnessCallback): logs "
            "eval_sharpness_hessian (top Hessian eigenvalue) and eval_sharpness_amp (worst-case loss increase)."
        },
    )


def parse_args(
    script_args_cls: type, argv: list[str] | None = None, preset_for: Callable[[Any], str] | None = None
) -> tuple[Any, AMPTrainingArguments]:
    """`script.py --flag ...` or `script.py config.json`, like the Hugging Face example scripts.

    Without `--amp_preset` and without any `--amp_*` flag, the arguments are parsed again with the preset that
    `preset_for(script_args)` names (the study's recommendation for the script's model family), so a user who passes
    no AMP setting never gets the reference defaults meant for long CNN training.
    """
    parser = HfArgumentParser((script_args_cls, AMPTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    config = json.loads(Path(argv[0]).read_text()) if len(argv) == 1 and argv[0].endswith(".json") else None

    def parse(preset: str | None) -> tuple[Any, AMPTrainingArguments]:
        if config is not None:
            return parser.parse_dict({**config, **({"amp_preset": preset} if preset else {})})
        return parser.parse_args_into_dataclasses(argv + (["--amp_preset", preset] if preset else []))

    script_args, training_args = parse(None)
    if preset_for is not None and training_args.amp_preset is None and not training_args.amp_given:
        script_args, training_args = parse(preset_for(script_args))
    if not 0 <= script_args.validation_fraction < 1 or not 0 <= script_args.test_fraction < 1:
        raise ValueError("--validation_fraction and --test_fraction must lie in [0, 1)")
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    datasets.utils.logging.set_verbosity_warning()
    if training_args.amp_preset:
        given = ", ".join(sorted(training_args.amp_given)) or "none"
        logger.info("AMP preset %s (amp_hf.presets); explicit --amp_* flags kept: %s", training_args.amp_preset, given)
    set_seed(training_args.seed)
    return script_args, training_args


# ------------------------------------------------------------------------------------------------------ data
def load_data(
    args: DataArguments, default_loader: Callable[[], Dataset | DatasetDict], columns: list[str], hint: str
) -> DatasetDict:
    """Train/validation/test splits from data files, a Hub data set, or the script's offline default.

    Checks that every split has `columns` first, so a wrong file fails before anything else happens.
    """
    if args.train_file:
        files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
        raw = DatasetDict({split: _load_file(path) for split, path in files.items() if path})
    elif args.dataset_name:
        try:
            raw = load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as err:  # datasets raises several types for "not found" / "offline"
            raise ValueError(
                f"--dataset_name {args.dataset_name!r} could not be loaded ({type(err).__name__}: {err}). Hub data "
                "sets need network access (unset HF_DATASETS_OFFLINE); offline, use --train_file or the default data."
            ) from err
    else:
        raw = default_loader()
        raw = raw if isinstance(raw, DatasetDict) else DatasetDict({"train": raw})
    require_columns(raw, columns, hint)
    return with_splits(raw, args)


def _load_file(path: str) -> Dataset:
    if not os.path.isfile(path):
        raise ValueError(f"data file {path!r} does not exist")
    suffixes = Path(path).suffixes
    kind = next((s.lstrip(".") for s in reversed(suffixes) if s in (".csv", ".json", ".jsonl")), None)
    if kind is None:
        raise ValueError(f"data file {path!r}: expected a .csv, .json or .jsonl file (optionally compressed)")
    return load_dataset("json" if kind == "jsonl" else kind, data_files=path, split="train")


def with_splits(raw: DatasetDict, args: DataArguments) -> DatasetDict:
    """Holds out validation and test sets from the training data when they are missing (fixed seed), then applies
    the --max_*_samples limits."""
    raw = holdout_splits(raw, args.validation_fraction, args.test_fraction)
    limits = {"train": args.max_train_samples, "validation": args.max_eval_samples, "test": args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and split in raw:
            raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
    return raw


def require_columns(data: DatasetDict, wanted: list[str], hint: str) -> None:
    """A clear error, before any training, when a data set lacks the columns the script needs."""
    for split, ds in data.items():
        missing = [c for c in wanted if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"the {split} data has no column(s) {missing}: found {ds.column_names}, wanted {wanted}. {hint}"
            )


def encode_labels(data: DatasetDict, column: str) -> list[str]:
    """Makes `column` a ClassLabel shared by all splits (strings or integers alike); returns the class names."""
    feature = data["train"].features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = sorted({v for ds in data.values() for v in ds.unique(column)}, key=lambda v: (str(type(v)), v))
    names = [str(v) for v in values]
    label = ClassLabel(names=names)
    mapping = {v: i for i, v in enumerate(values)}
    data_cast = {
        split: ds.map(lambda row: {column: mapping[row[column]]}).cast_column(column, label)
        for split, ds in data.items()
    }
    data.update(data_cast)
    return names


def from_pretrained(auto_cls, name: str, **kwargs):
    """`auto_cls.from_pretrained(name)` with an error that says what was looked for, and where."""
    try:
        return auto_cls.from_pretrained(name, **kwargs)
    except OSError as err:
        raise ValueError(
            f"--model_name_or_path {name!r} is neither a local model folder nor a model that can be fetched "
            f"({'offline: HF_HUB_OFFLINE=1' if os.environ.get('HF_HUB_OFFLINE') == '1' else 'Hub lookup failed'})."
        ) from err


# --------------------------------------------------------------------------------------------------- the run
def accuracy_f1(num_labels: int):
    """compute_metrics for the Trainer, through an `evaluate` module that needs no network."""
    metric = evaluate.load(str(METRIC_MODULE), keep_in_memory=True)
    average = "binary" if num_labels == 2 else "macro"

    def compute(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        predictions = np.argmax(logits[0] if isinstance(logits, tuple) else logits, axis=-1)
        return metric.compute(predictions=predictions, references=labels, average=average)

    return compute


def run(script_args: DataArguments, training_args: AMPTrainingArguments, data: DatasetDict, **trainer_kwargs):
    """Trains, evaluates on validation, tests; prints and saves the metrics. Returns (trainer, test metrics)."""
    trainer_cls = Trainer if script_args.erm else AMPTrainer
    trainer = trainer_cls(
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data.get("validation"),
        **trainer_kwargs,
    )
    if script_args.sharpness:
        trainer.add_callback(SharpnessCallback(trainer=trainer))
    logger.info(
        "training %s with %s on %d examples", type(trainer.model).__name__, trainer_cls.__name__, len(data["train"])
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if "validation" in data:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    test_metrics: dict[str, float] = {}
    if "test" in data:
        test_metrics = trainer.predict(data["test"], metric_key_prefix="test").metrics
        trainer.log_metrics("test", test_metrics)
        trainer.save_metrics("test", test_metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        summary = {"trainer": trainer_cls.__name__, **{k: v for k, v in test_metrics.items() if "runtime" not in k}}
        print("RESULT " + json.dumps(summary), flush=True)
    return trainer, test_metrics
