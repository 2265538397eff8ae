"""amp_hf.compare.candidates: presets, JSON objects and named JSON candidates become flags; bad ones are refused
naming the key or value, before anything runs."""

from __future__ import annotations

import re

import pytest

from amp_hf.compare.candidates import (
    CompareError,
    amp_flags_in,
    check_seeds,
    merge_notes,
    outside_regime,
    parse_candidate,
    parse_candidates,
)


def test_erm_first_then_presets_and_json_with_stable_names():
    parsed = parse_candidates(["cnn_long_noisy", '{"amp_norm": "global", "amp_epsilon": 0.05}', "erm"])
    assert [c.name for c in parsed] == ["erm", "cnn_long_noisy", "global-eps0.05"]  # a listed ERM is not repeated
    assert parsed[0].flags() == ["--amp_inner_steps", "0"]
    assert parsed[1].flags() == ["--amp_preset", "cnn_long_noisy"]
    assert parsed[2].flags() == ["--amp_norm", "global", "--amp_epsilon", "0.05"]
    named = parse_candidate('small={"amp_epsilon": 0.1, "amp_exclude": ["bias", "norm"]}')
    assert named.name == "small" and named.flags() == ["--amp_epsilon", "0.1", "--amp_exclude", "bias", "norm"]
    assert parse_candidate({"amp_preset": "reference", "amp_ascent_fraction": 0.5}).name == "reference-f0.5"
    assert parse_candidate("cnn_long_noisy@1").flags() == ["--amp_preset", "cnn_long_noisy@1"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cnn_short", "neither a preset .*cnn_long_noisy"),
        ('{"learning_rate": 0.1}', "'learning_rate' is not an amp_\\* argument"),
        ('{"amp_norm": "ball"}', "amp_norm must be one of"),
        ('{"amp_epsilon": -1}', "amp_epsilon must be >= 0"),
        ('{"amp_preset": "nope"}', "amp_preset must be one of"),
        ('{"amp_epsilon": 0.1', "not valid JSON"),
        ("[1, 2]", "neither a preset"),
        ("{}", "reference defaults"),
        ('a b={"amp_epsilon": 0.1}', "candidate name 'a b'"),
        ('.={"amp_epsilon": 0.1}', "candidate name '.'.*outside the runs folder"),
        ('..={"amp_epsilon": 0.1}', "candidate name '..'.*not only dots"),
        ('{"amp_exclude": []}', "amp_exclude is an empty list.*leave the key out"),
        ('{"amp_include": [], "amp_epsilon": 0.1}', "amp_include is an empty list"),
        ('{"amp_exclude": ["bias", "-x"]}', "amp_exclude entry '-x' starts with '-'"),
    ],
)
def test_bad_candidates_are_refused_naming_the_problem(spec, message):
    with pytest.raises(CompareError, match=message):
        parse_candidates([spec])


def test_two_candidates_with_one_name_are_refused():
    with pytest.raises(CompareError, match="two candidates are named 'x'"):
        parse_candidates(['x={"amp_epsilon": 0.1}', 'x={"amp_epsilon": 0.2}'])


def test_seeds():
    assert check_seeds([3, 1]) == [3, 1]
    with pytest.raises(CompareError, match="at least one seed"):
        check_seeds([])
    with pytest.raises(CompareError, match="lists 1 more than once"):
        check_seeds([1, 2, 1])
    assert check_seeds([0, 2**32 - 1]) == [0, 2**32 - 1]
    for bad in (-1, 2**32):
        with pytest.raises(CompareError, match=f"--seeds: {bad} is outside 0 to 2\\*\\*32 - 1: .*numpy"):
            check_seeds([0, bad])


def test_expected_settings_are_the_resolved_ones():
    """What the report checks a run against: the candidate resolved as its runs resolve it (every setting, not only
    the ones it names; the patterns only when it sets them; for ERM only what turns AMP off)."""
    small = parse_candidate('{"amp_epsilon": 0.1}')
    assert small.expected_settings() == {
        "epsilon": 0.1,
        "inner_steps": 1,
        "inner_lr": 1.0,
        "norm": "tensor",
        "interval": 1,
        "start_step": 0,
        "ascent_fraction": 1.0,
        "direction": "gradient",
    }
    assert parse_candidate("cnn_long_noisy@1").expected_settings()["ascent_fraction"] == 0.125
    assert parse_candidate('{"amp_exclude": ["bias"]}').expected_settings()["exclude"] == ("bias",)
    assert parse_candidate("erm").expected_settings() == {"inner_steps": 0}
    assert parse_candidate('{"amp_epsilon": 0}').expected_settings() == {"epsilon": 0.0}


def test_candidates_with_the_same_resolved_settings_are_merged_with_a_note():
    """7 spellings of 2 settings train 2 candidates: another key order, a preset twice, a JSON object equal to a
    preset, and every ERM preset (merged into erm, adding no comparison)."""
    specs = [
        '{"amp_norm": "global", "amp_epsilon": 0.05}',
        '{"amp_epsilon": 0.05, "amp_norm": "global", "amp_inner_lr": 1}',  # the default inner_lr, spelled out
        "cnn_long_noisy",
        "cnn_long_noisy@1",
        '{"amp_ascent_fraction": 0.125}',  # what cnn_long_noisy sets
        "finetune",
        "cnn",
        "vit_from_scratch",
        "text_finetune",
        '{"amp_epsilon": 0}',
        "erm",
    ]
    parsed = parse_candidates(specs)
    assert [c.name for c in parsed] == ["erm", "global-eps0.05", "cnn_long_noisy"]
    assert [c.name for c in parsed[0].merged] == ["finetune", "cnn", "vit_from_scratch", "text_finetune", "eps0"]
    assert [c.name for c in parsed[1].merged] == ["eps0.05-global-lr1"]
    assert [c.name for c in parsed[2].merged] == ["cnn_long_noisy@1", "f0.125"]
    notes = merge_notes(parsed)
    assert len(notes) == 3
    assert notes[0].startswith('finetune, cnn, vit_from_scratch, text_finetune, eps0 {"amp_epsilon": 0}: plain ERM')
    assert "compared as erm" in notes[0]
    assert 'f0.125 {"amp_ascent_fraction": 0.125}: the same settings as cnn_long_noisy' in notes[2]
    assert merge_notes(parse_candidates(["sam", "asam"])) == []


def test_patterns_left_to_the_command_are_not_the_candidates_own():
    """A candidate that sets amp_exclude differs from one that leaves it to the command's flags; only AMP's off switch
    makes every pattern irrelevant."""
    parsed = parse_candidates(['{"amp_epsilon": 0.1}', '{"amp_epsilon": 0.1, "amp_exclude": ["bias"]}'])
    assert len(parsed) == 3
    parsed = parse_candidates(['{"amp_inner_steps": 0, "amp_exclude": ["bias"]}'])
    assert len(parsed) == 1 and len(parsed[0].merged) == 1


def test_one_name_for_two_settings_is_refused_even_when_one_is_erm():
    with pytest.raises(CompareError, match="two candidates are named 'erm'"):
        parse_candidates(['erm={"amp_epsilon": 0.1}'])
    assert [c.name for c in parse_candidates(['x={"amp_epsilon": 0.1}', 'x={"amp_epsilon": 0.1}'])] == ["erm", "x"]


@pytest.mark.parametrize(
    ("words", "setting"),
    [
        (["--amp_epsilon", "0.1"], "amp_epsilon"),
        (["--amp-epsilon", "0.1"], "amp_epsilon"),
        (["--amp_eps", "0.1"], "amp_epsilon"),
        (["--amp_eps=0.1"], "amp_epsilon"),
        (["--amp-inner-steps=2"], "amp_inner_steps"),
        (["--amp_pre", "sam"], "amp_preset"),
        (["--amp-preset", "sam"], "amp_preset"),
        (["--amp_preset=sam"], "amp_preset"),
        (["--amp_n", "global"], "amp_norm"),
        (["--amp_as", "0.5"], "amp_ascent_fraction"),
    ],
)
def test_every_spelling_the_scripts_parser_accepts_is_refused(tmp_path, words, setting):
    """Each spelling does change the setting in the script's own HfArgumentParser, and check_command refuses it
    before running anything (today's check knew only the exact `--amp_epsilon`)."""
    from transformers import HfArgumentParser

    from amp_hf import AMPTrainingArguments
    from amp_hf.compare.command import check_command

    (args,) = HfArgumentParser(AMPTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), *words]
    )
    assert setting in args.amp_given or (setting == "amp_preset" and args.amp_preset == "sam")
    with pytest.raises(CompareError, match=f"the command sets {re.escape(words[0])}.*which the candidates set"):
        check_command(["python", "train.py", "--do_train", *words])


def test_the_patterns_ambiguous_prefixes_and_other_flags_stay_allowed():
    command = "python train.py --amp_include norm --amp-exclude bias --amp_excl x --amp_e 3 --amp 1 --lr 1 --amp_x"
    assert amp_flags_in(command.split()) == {}
    assert amp_flags_in(["accelerate", "launch", "train.py", "--amp_inner_steps=3"]) == {
        "--amp_inner_steps=3": "amp_inner_steps"
    }


def test_a_preset_used_outside_its_regime_is_noted():
    """cnn_long_noisy was chosen with SGD and momentum: in an AdamW run its verdict gets a note; inside its regime, for
    a method (no regime), a JSON candidate, ERM, or an unknown optimizer there is none."""
    (noisy,) = parse_candidates(["cnn_long_noisy"])[1:]
    assert outside_regime(noisy, "AdamW") == (
        "cnn_long_noisy was chosen with SGD + momentum, from scratch; this run used AdamW"
    )
    assert outside_regime(noisy, "SGD") is None and outside_regime(noisy, None) is None
    tweaked = parse_candidate('{"amp_preset": "reference", "amp_ascent_fraction": 0.5}')
    assert outside_regime(tweaked, "Adam") == (
        "reference-f0.5 (preset reference@1) was chosen with SGD + momentum, from scratch; this run used Adam"
    )
    for other in ("sam", '{"amp_epsilon": 0.1}', "erm"):
        assert outside_regime(parse_candidate(other), "AdamW") is None, other
