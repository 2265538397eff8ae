"""Every AMP setting is validated with a message that names the field and what it allows."""

import pytest

from amp_hf import AMPConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epsilon", -0.1, r"amp_epsilon must be >= 0"),
        ("epsilon", float("nan"), r"amp_epsilon must be a finite number"),
        ("epsilon", "0.5", r"amp_epsilon must be a finite number"),
        ("inner_steps", -1, r"amp_inner_steps must be an integer >= 0"),
        ("inner_steps", 1.5, r"amp_inner_steps must be an integer"),
        ("inner_lr", 0.0, r"amp_inner_lr must be > 0"),
        ("inner_lr", -1.0, r"amp_inner_lr must be > 0"),
        ("norm", "l2", r"amp_norm must be one of 'tensor', 'global', 'relative', 'elementwise', got 'l2'"),
        ("interval", 0, r"amp_interval must be an integer >= 1"),
        ("start_step", -3, r"amp_start_step must be an integer >= 0"),
        ("exclude", ["bias", "("], r"amp_exclude entry '\(' is not a valid regular expression"),
        ("exclude", [""], r"amp_exclude entries must be non-empty"),
        ("exclude", 5, r"amp_exclude must be a list of regular expressions .* got int 5"),
        ("exclude", {"bias": 1}, r"amp_exclude must be a list of regular expressions .* got dict"),
        ("exclude", b"bias", r"amp_exclude must be a list of regular expressions .* got bytes"),
        ("exclude", {"bias"}, r"amp_exclude must be a list of regular expressions .* got set"),
        ("exclude", ["bias", 3], r"amp_exclude entries must be non-empty regular expressions \(strings\), got 3"),
        ("include", ["("], r"amp_include entry '\(' is not a valid regular expression"),
        ("include", 1.5, r"amp_include must be a list of regular expressions"),
        ("ascent_fraction", 0.0, r"amp_ascent_fraction must be in \(0, 1\]"),
        ("ascent_fraction", 1.5, r"amp_ascent_fraction must be in \(0, 1\]"),
        ("ascent_fraction", "half", r"amp_ascent_fraction must be a finite number"),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        AMPConfig(**{field: value})


def test_defaults_are_the_reference_settings():
    config = AMPConfig()
    assert (config.epsilon, config.inner_steps, config.inner_lr, config.norm) == (0.5, 1, 1.0, "tensor")
    assert config.enabled


@pytest.mark.parametrize("off", [{"epsilon": 0.0}, {"inner_steps": 0}])
def test_zero_radius_or_zero_steps_turn_amp_off(off):
    config = AMPConfig(**off)
    assert not config.enabled
    assert not any(config.applies_at(step) for step in range(10))


def test_schedule_counts_from_the_start_step():
    config = AMPConfig(interval=3, start_step=2)
    assert [s for s in range(12) if config.applies_at(s)] == [2, 5, 8, 11]


def test_exclude_patterns_are_regular_expressions_searched_in_names():
    config = AMPConfig(exclude=["bias", r"LayerNorm\."])
    assert config.is_excluded("encoder.layer.0.attention.output.dense.bias")
    assert config.is_excluded("encoder.layer.0.output.LayerNorm.weight")
    assert not config.is_excluded("encoder.layer.0.output.dense.weight")


def test_from_args_fills_missing_fields_with_defaults():
    class Partial:
        amp_epsilon = 0.1

    assert AMPConfig.from_args(Partial()) == AMPConfig(epsilon=0.1)
    assert "amp_norm" in AMPConfig.missing_from(Partial())


def test_include_selects_and_exclude_removes_from_the_selection():
    config = AMPConfig(include=["LayerNorm"], exclude=[r"\.bias$"])
    assert config.selects("encoder.layer.0.output.LayerNorm.weight")
    assert not config.selects("vit.layernorm_before.weight")  # re.search is case-sensitive, as documented
    assert not config.selects("encoder.layer.0.output.LayerNorm.bias")
    assert not config.selects("encoder.layer.0.output.dense.weight")
    assert AMPConfig().selects("anything")  # no include: every name is a candidate
