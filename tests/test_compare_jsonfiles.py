"""amp_hf.compare.jsonfiles: strict JSON out (a diverged run's NaN named, never a bare token), the Trainer's bare
tokens and the strict names read back as floats, and a write that fails leaves the old file whole."""

from __future__ import annotations

import json
import math

import pytest

from amp_hf.compare.jsonfiles import number, read_json, write_json


def _refuse_constants(name: str):
    raise ValueError(f"not strict JSON: {name}")


def test_non_finite_numbers_are_written_as_strict_json_and_read_back(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_json(path, {"eval_loss": math.nan, "values": [math.inf, -math.inf, 0.5], "ok": 1})
    value = json.loads(path.read_text(), parse_constant=_refuse_constants)  # a strict reader accepts it
    assert value == {"eval_loss": "NaN", "values": ["Infinity", "-Infinity", 0.5], "ok": 1}
    assert math.isnan(number(value["eval_loss"])) and [number(v) for v in value["values"]] == [math.inf, -math.inf, 0.5]
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left


def test_the_trainers_bare_tokens_are_read_as_floats(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text('{"best_metric": NaN, "log_history": [{"eval_loss": Infinity}]}')  # as TrainerState writes it
    state = read_json(path)
    assert math.isnan(number(state["best_metric"])) and number(state["log_history"][0]["eval_loss"]) == math.inf
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "half.json").write_text('{"a": ')
    assert read_json(tmp_path / "half.json") is None
    assert number(True) is None and number("nan?") is None and number(None) is None and number(3) == 3.0


def test_a_value_that_cannot_be_written_leaves_the_old_file(tmp_path):
    path = tmp_path / "done.json"
    write_json(path, {"seed": 0})

    class Loop(dict):
        pass

    looped = Loop()
    looped["self"] = looped
    with pytest.raises((ValueError, RecursionError)):
        write_json(path, looped)
    assert read_json(path) == {"seed": 0} and [p.name for p in tmp_path.iterdir()] == ["done.json"]
