"""The library presets: lookup, versions, refusals, and that the shipped values are the ones the studies chose."""

import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from transformers import HfArgumentParser

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


@pytest.mark.parametrize(
    ("preset", "explicit"),
    [
        (None, {}),
        ("cnn_long_noisy", {}),
        ("cnn_long_noisy@1", {"amp_epsilon": 0.1, "amp_exclude": ["bias"]}),
        ("finetune", {"amp_inner_steps": 1}),  # an explicit value beats an ERM preset's off switch
        ("sam", {"amp_ascent_fraction": 1.0}),  # explicit, also when equal to the default
        (None, {"amp_norm": "global", "amp_include": ["norm"]}),
    ],
)
def test_one_resolver_for_every_caller(tmp_path, preset, explicit):
    """The training arguments, the custom-loop AMP, preset_config and compare's candidates resolve a preset plus
    explicit amp_* values through presets.resolve: they give the same AMPConfig."""
    from helpers import TinyClassifier

    from amp_hf import AMP
    from amp_hf.compare.candidates import parse_candidate

    expected = presets_module.resolve(preset, explicit)
    args = AMPTrainingArguments(output_dir=str(tmp_path), report_to="none", amp_preset=preset, **explicit)
    assert args.amp_config == expected
    assert AMP(TinyClassifier(), amp_preset=preset, **explicit).config == expected
    candidate = parse_candidate({**({"amp_preset": preset} if preset else {}), **explicit} or {"amp_epsilon": 0.5})
    assert candidate.config == expected
    if preset is not None:
        short = {key.removeprefix("amp_"): value for key, value in explicit.items()}
        assert presets_module.preset_config(preset, **short) == expected


def test_resolve_refuses_unknown_settings_and_bad_values_naming_them():
    assert presets_module.resolve() == AMPConfig()
    assert presets_module.resolve("cnn_long_noisy", {"amp_epsilon": 0.1}) == AMPConfig(
        epsilon=0.1, ascent_fraction=0.125
    )
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['amp_epsilom'\]; allowed: amp_epsilon"):
        presets_module.resolve(None, {"amp_epsilom": 0.1})
    with pytest.raises(ValueError, match="amp_norm must be one of"):
        presets_module.resolve("sam", {"amp_norm": "ball"})
    with pytest.raises(ValueError, match="amp_preset must be one of"):
        presets_module.resolve("nope")


def test_the_reference_defaults_warning_describes_each_preset_as_what_it_is():
    """The warning offered 'text_finetune' as "a small ball for text fine-tuning"; that preset is plain ERM."""
    from amp_hf.micro_batch import PRESET_ADVICE

    offered = re.findall(r"'(\w+)' \(([^)]*)\)", PRESET_ADVICE)
    assert offered
    for name, description in offered:
        assert ("plain ERM" in description) == (not presets_module.resolve(name).enabled), (name, description)
        assert "ball" not in description or presets_module.resolve(name).enabled, (name, description)


def test_every_recommendation_carries_the_regime_it_was_chosen_in():
    regimes = {name: (p.optimizer, p.pretrained) for name, p in PRESETS.items()}
    assert regimes == {
        "cnn_long_noisy": ("SGD + momentum", False),
        "cnn": ("SGD + momentum", False),
        "reference": ("SGD + momentum", False),
        "vit_from_scratch": ("AdamW", False),
        "text_finetune": ("AdamW", True),
        "finetune": ("AdamW", True),
        "sam": (None, None),
        "asam": (None, None),
        "msam": (None, None),
    }
    assert PRESETS["text_finetune"].regime == "AdamW, fine-tuning pretrained weights" and PRESETS["sam"].regime is None
    with pytest.raises(ValueError, match="names its regime"):
        presets_module.Preset("x", 1, {}, "w", "e", study_entry=None)
    family = presets_module.optimizer_family
    assert family("AdamW") == family("Adam") == family("AdamW8bit") == family("FusedAdam") == "adam"
    assert family("SGD") == family("torch.optim.SGD") == family("SGD + momentum") == "sgd" != family("Adafactor")


# ------------------------------------------------------------------------- the literature's methods: sam, asam
def measured(name: str) -> dict:
    """A study's candidate, as the transfer study ran it (benchmarks/transfer.py's ALL_CANDIDATES)."""
    from benchmarks.transfer import ALL_CANDIDATES

    return next(method.kwargs for method in ALL_CANDIDATES if method.name == name)


def test_sam_and_asam_are_the_settings_the_studies_measured():
    from benchmarks.methods import SAM_GLOBAL

    assert (
        get_preset("sam")
        == {**DEFAULT_ARGUMENTS, **SAM_GLOBAL.kwargs}
        == {**DEFAULT_ARGUMENTS, **measured("sam_global ε=0.05")}
    )
    assert get_preset("asam") == {**DEFAULT_ARGUMENTS, **measured("asam ε=0.5")}
    sam, asam = (presets_module.preset_config(name) for name in ("sam", "asam"))
    assert (sam.norm, sam.epsilon, sam.inner_lr, sam.inner_steps, sam.ascent_fraction) == (
        "global",
        0.05,
        100.0,
        1,
        1.0,
    )
    assert (asam.norm, asam.epsilon, asam.inner_lr, asam.inner_steps) == ("elementwise", 0.5, 100.0, 1)
    assert find_preset("sam@1") is PRESETS["sam"] and find_preset("asam@1") is PRESETS["asam"]


def test_methods_are_marked_as_methods_not_recommendations():
    assert presets_module.method_names() == ["asam", "msam", "sam"]
    for name, preset in PRESETS.items():
        assert preset.is_method == (name in ("sam", "asam", "msam")), name
        if preset.is_method:
            assert preset.kind == presets_module.METHOD and preset.study_entry is None
            assert "not a recommendation" in preset.when and "not a recommendation" in preset.evidence
        else:
            assert preset.kind == presets_module.RECOMMENDATION
    lines = {line.split()[0]: line.split()[1] for line in presets_module.listing().splitlines()}
    assert lines == {p.key: p.kind for p in PRESETS.values()}
    with pytest.raises(ValueError, match="study_entry"):
        presets_module.Preset("x", 1, {}, "w", "e", study_entry="cnn", kind=presets_module.METHOD)
    help_text = next(f for f in fields(AMPTrainingArguments) if f.name == "amp_preset").metadata["help"]
    assert re.search(r"methods.*rather than recommendations: asam, msam, sam", help_text)


def test_sam_preset_from_the_command_line_puts_delta_on_the_sphere(tmp_path):
    """`--amp_preset sam` through HfArgumentParser; trained one step, ‖Δ‖ is ρ = 0.05 exactly: SAM's normalised step."""
    from helpers import DictDataset, TinyClassifier

    from amp_hf import AMPTrainer

    flags = ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu", "--max_steps", "2", "--logging_steps"]
    (args,) = HfArgumentParser(AMPTrainingArguments).parse_args_into_dataclasses([*flags, "1", "--amp_preset", "sam"])
    assert args.amp_config == AMPConfig(norm="global", epsilon=0.05, inner_lr=100.0, inner_steps=1)
    (explicit,) = HfArgumentParser(AMPTrainingArguments).parse_args_into_dataclasses(
        [*flags, "1", "--amp_preset", "asam", "--amp_epsilon", "0.1"]
    )
    assert explicit.amp_config == AMPConfig(norm="elementwise", epsilon=0.1, inner_lr=100.0, inner_steps=1)
    trainer = AMPTrainer(model=TinyClassifier(), args=args, train_dataset=DictDataset(n=8))
    trainer.train()
    deltas = [entry["amp_delta_norm"] for entry in trainer.state.log_history if "amp_delta_norm" in entry]
    assert len(deltas) == 2 and deltas == pytest.approx([0.05, 0.05], rel=1e-5)
