"""The library presets: lookup, versions, refusals, and that the shipped values are the ones the studies chose."""

import json
import re
from pathlib import Path

import pytest

from amp_hf import AMPConfig, AMPTrainingArguments
from amp_hf import presets as presets_module
from amp_hf.presets import DEFAULT_ARGUMENTS, PRESETS, SCALAR_ARGUMENTS, find_preset, get_preset, names

ROOT = Path(__file__).resolve().parents[1]
RECOMMENDED = json.loads((ROOT / presets_module.EVIDENCE_FILE).read_text())


def test_shipped_presets_match_the_studies_evidence():
    """Each preset with a study entry sets exactly what the benchmark that chose it wrote in recommended.json, and
    every entry a study wrote is shipped under its name, so a new or changed recommendation cannot go unnoticed."""
    for name, preset in PRESETS.items():
        if preset.study_entry is None:
            continue
        entry = RECOMMENDED[preset.study_entry]
        assert dict(preset.settings) == entry["args"], name
        # a share of the run (start_fraction) depends on the run's length: a preset cannot carry it as it stands
        assert not entry.get("start_fraction"), f"{preset.study_entry} recommends a start_fraction; presets lack it"
    assert set(RECOMMENDED) <= set(PRESETS)
    assert {PRESETS[key].study_entry for key in RECOMMENDED} == set(RECOMMENDED)


def test_todays_names_keep_their_meaning():
    assert get_preset("cnn_long_noisy") == {**DEFAULT_ARGUMENTS, "amp_ascent_fraction": 0.125}
    assert get_preset("reference") == dict(DEFAULT_ARGUMENTS)
    assert AMPConfig(**{k.removeprefix("amp_"): v for k, v in get_preset("reference").items()}) == AMPConfig()
    for erm in ("vit_from_scratch", "text_finetune", "cnn", "finetune"):
        assert get_preset(erm) == {**DEFAULT_ARGUMENTS, "amp_inner_steps": 0}, erm
        assert not AMPConfig(**{k.removeprefix("amp_"): v for k, v in get_preset(erm).items()}).enabled


def test_every_preset_says_when_and_where_its_evidence_is():
    for preset in PRESETS.values():
        assert preset.when and "\n" not in preset.when and preset.evidence
        paths = re.findall(r"(?:docs|benchmarks/results)/[\w./-]+\.(?:md|json)", preset.evidence)
        assert paths, f"{preset.name}: its evidence names no file"
        for path in paths:
            assert (ROOT / path).is_file(), f"{preset.name}: {path} does not exist"
        assert set(preset.settings) <= set(SCALAR_ARGUMENTS)
        AMPTrainingArguments(output_dir="unused", report_to="none", use_cpu=True, amp_preset=preset.key)  # valid


def test_versions_and_returned_values():
    assert find_preset("cnn_long_noisy@1") is PRESETS["cnn_long_noisy"]
    assert PRESETS["cnn_long_noisy"].key == "cnn_long_noisy@1"
    values = get_preset("cnn_long_noisy")
    assert set(values) == set(SCALAR_ARGUMENTS)
    values["amp_epsilon"] = 99.0  # a fresh dict: changing it changes no preset
    assert get_preset("cnn_long_noisy")["amp_epsilon"] == 0.5
    assert names() == sorted(PRESETS)


@pytest.mark.parametrize("bad", ["cnn_long", "CNN_LONG_NOISY", "", "cnn_long_noisy@7", "cnn_long_noisy@", 3])
def test_unknown_names_are_refused_with_the_list(bad):
    with pytest.raises(ValueError, match="amp_preset") as err:
        find_preset(bad)
    text = str(err.value)
    assert "cnn_long_noisy" in text and ("versions" in text or all(n in text for n in names()))


def test_preset_config_for_code_outside_the_trainer():
    config = presets_module.preset_config("cnn_long_noisy", epsilon=0.1)
    assert config == AMPConfig(ascent_fraction=0.125, epsilon=0.1)
    assert not presets_module.preset_config("finetune").enabled
    with pytest.raises(ValueError, match="amp_preset"):
        presets_module.preset_config("nope")
