"""The AMP fields as flags of HfArgumentParser, validated when the arguments are built, and mixable."""

import pytest
from transformers import HfArgumentParser

from amp_hf import AMPConfig, AMPSeq2SeqTrainingArguments, AMPTrainingArguments


def test_cli_flags_through_hf_argument_parser(tmp_path):
    parser = HfArgumentParser(AMPTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir", str(tmp_path),
            "--amp_epsilon", "0.1",
            "--amp_inner_steps", "2",
            "--amp_inner_lr", "0.5",
            "--amp_norm", "global",
            "--amp_interval", "4",
            "--amp_start_step", "10",
            "--amp_exclude", "bias", "LayerNorm",
            "--learning_rate", "0.01",
        ]
    )  # fmt: skip
    expected = dict(epsilon=0.1, inner_steps=2, inner_lr=0.5, norm="global", interval=4, start_step=10)
    assert args.amp_config == AMPConfig(**expected, exclude=("bias", "LayerNorm"))
    assert args.learning_rate == 0.01  # the Trainer's own flags still work


def test_help_text_documents_every_amp_flag():
    text = " ".join(HfArgumentParser(AMPTrainingArguments).format_help().split())  # argparse wraps lines
    for flag in ("--amp_epsilon", "--amp_inner_steps", "--amp_inner_lr", "--amp_norm", "--amp_interval",
                 "--amp_start_step", "--amp_exclude"):  # fmt: skip
        assert flag in text
    assert "one ball over all perturbed tensors" in text


def test_parser_rejects_unknown_norm_choice(tmp_path):
    with pytest.raises(SystemExit):
        HfArgumentParser(AMPTrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--amp_norm", "l2"]
        )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"amp_epsilon": -1.0}, "amp_epsilon"),
        ({"amp_inner_steps": -2}, "amp_inner_steps"),
        ({"amp_inner_lr": 0.0}, "amp_inner_lr"),
        ({"amp_norm": "spectral"}, "amp_norm"),
        ({"amp_interval": 0}, "amp_interval"),
        ({"amp_start_step": -1}, "amp_start_step"),
        ({"amp_exclude": ["[unclosed"]}, "amp_exclude"),
    ],
)
@pytest.mark.parametrize("args_cls", [AMPTrainingArguments, AMPSeq2SeqTrainingArguments])
def test_bad_values_fail_when_the_arguments_are_built(tmp_path, args_cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        args_cls(output_dir=str(tmp_path), **kwargs)


def test_seq2seq_arguments_keep_their_own_fields(tmp_path):
    args = AMPSeq2SeqTrainingArguments(output_dir=str(tmp_path), predict_with_generate=True, amp_epsilon=0.2)
    assert args.predict_with_generate and args.amp_config.epsilon == 0.2
