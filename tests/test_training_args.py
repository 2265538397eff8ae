"""The AMP fields as flags of HfArgumentParser, validated when the arguments are built, and mixable."""

import pytest
from transformers import HfArgumentParser

from amp_hf import AMPConfig, AMPSeq2SeqTrainingArguments, AMPTrainingArguments
from amp_hf.presets import DEFAULT_ARGUMENTS, SCALAR_ARGUMENTS, get_preset
from amp_hf.presets import names as preset_names


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


# ---------------------------------------------------------------------------------------------------- presets
def amp_values(args) -> dict:
    return {name: getattr(args, name) for name in SCALAR_ARGUMENTS}


def test_preset_fills_every_amp_argument(tmp_path):
    args = AMPTrainingArguments(output_dir=str(tmp_path), amp_preset="cnn_long_noisy")
    assert amp_values(args) == get_preset("cnn_long_noisy")
    assert args.amp_config.ascent_fraction == 0.125 and args.amp_given == frozenset()
    erm = AMPTrainingArguments(output_dir=str(tmp_path), amp_preset="text_finetune")
    assert erm.amp_inner_steps == 0 and not erm.amp_config.enabled
    plain = AMPTrainingArguments(output_dir=str(tmp_path))  # no preset: the reference defaults, all concrete
    assert amp_values(plain) == dict(DEFAULT_ARGUMENTS) and plain.amp_preset is None


def test_explicit_values_win_over_the_preset_also_when_equal_to_the_defaults(tmp_path):
    args = AMPTrainingArguments(output_dir=str(tmp_path), amp_preset="cnn_long_noisy", amp_epsilon=0.1)
    assert args.amp_epsilon == 0.1 and args.amp_ascent_fraction == 0.125 and args.amp_given == {"amp_epsilon"}
    # 1.0 is the default of amp_ascent_fraction: given explicitly, it still beats the preset's 0.125
    args = AMPTrainingArguments(output_dir=str(tmp_path), amp_preset="cnn_long_noisy", amp_ascent_fraction=1.0)
    assert args.amp_ascent_fraction == 1.0
    # the ERM presets' amp_inner_steps=0 yields to an explicit 1 (the default value)
    args = AMPTrainingArguments(output_dir=str(tmp_path), amp_preset="vit_from_scratch", amp_inner_steps=1)
    assert args.amp_config.enabled and args.amp_epsilon == 0.5
    args = AMPTrainingArguments(output_dir=str(tmp_path), amp_preset="finetune", amp_exclude=["bias"])
    assert args.amp_exclude == ["bias"] and args.amp_inner_steps == 0  # patterns are never a preset's


@pytest.mark.parametrize("args_cls", [AMPTrainingArguments, AMPSeq2SeqTrainingArguments])
def test_unknown_preset_is_refused_naming_the_field_and_the_names(tmp_path, args_cls):
    with pytest.raises(ValueError, match="amp_preset") as err:
        args_cls(output_dir=str(tmp_path), amp_preset="cnn_noisy_long")
    assert all(name in str(err.value) for name in preset_names())


def test_preset_flag_through_hf_argument_parser(tmp_path):
    parser = HfArgumentParser(AMPTrainingArguments)
    base = ["--output_dir", str(tmp_path)]
    (args,) = parser.parse_args_into_dataclasses(base + ["--amp_preset", "cnn_long_noisy"])
    assert amp_values(args) == get_preset("cnn_long_noisy")
    # a flag equal to the default still counts as given, and wins over the preset
    flags = ["--amp_preset", "cnn_long_noisy", "--amp_ascent_fraction", "1", "--amp_norm", "tensor"]
    (args,) = parser.parse_args_into_dataclasses(base + flags)
    assert args.amp_ascent_fraction == 1.0 and args.amp_given == {"amp_ascent_fraction", "amp_norm"}
    (args,) = parser.parse_dict({"output_dir": str(tmp_path), "amp_preset": "cnn", "amp_epsilon": 0.2})
    assert args.amp_inner_steps == 0 and args.amp_epsilon == 0.2
    with pytest.raises(ValueError, match="amp_preset"):
        parser.parse_args_into_dataclasses(base + ["--amp_preset", "nope"])
    assert "--amp_preset" in " ".join(parser.format_help().split())


def test_resolved_arguments_round_trip_unchanged(tmp_path):
    """After construction the amp_* fields are concrete: rebuilding from them (as dataclasses.replace, a saved
    config, or a search trial does) gives the same settings, whatever the preset."""
    import dataclasses

    args = AMPTrainingArguments(output_dir=str(tmp_path), amp_preset="cnn_long_noisy", amp_epsilon=0.3)
    again = dataclasses.replace(args)
    assert amp_values(again) == amp_values(args) and again.amp_config == args.amp_config
