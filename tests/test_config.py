"""The run-file policy: strict types, unknown keys, every error at once, with paths."""

from __future__ import annotations

import attrs
import pytest

from hostkit import option, positive
from hostkit.config import did_you_mean, structure_strict
from hostkit_lora.data import TextData as DataConfig
from hostkit.errors import ConfigError
from hostkit.handles import HfModel


@attrs.frozen
class Opts:
    r: int = option(8, help="rank", validator=positive)
    alpha: float = option(16.0, help="alpha")
    flag: bool = option(False, help="a flag")
    names: list[str] | None = option(None, help="names")
    either: str | list[str] | None = option(None, help="a string or a list")
    table: dict[str, int] = option(factory=dict, help="a table")


def problems(data, cls=Opts, path="passes[0] (X)"):
    with pytest.raises(ConfigError) as info:
        structure_strict(data, cls, path)
    return info.value.problems


def test_no_silent_coercion():
    found = problems({"r": "8", "flag": "false", "alpha": "1"})
    assert "passes[0] (X).r: expected an integer, got string '8'" in found
    assert "passes[0] (X).flag: expected true or false, got string 'false'" in found
    assert "passes[0] (X).alpha: expected a number, got string '1'" in found


def test_float_is_not_an_int_and_bool_is_not_a_number():
    assert problems({"r": 8.7}) == ["passes[0] (X).r: expected an integer, got float 8.7"]
    assert problems({"r": True}) == ["passes[0] (X).r: expected an integer, got boolean true"]


def test_float_accepts_toml_integer():
    value = structure_strict({"alpha": 32}, Opts, "p")
    assert value.alpha == 32.0 and isinstance(value.alpha, float)


def test_string_is_not_a_list():
    assert problems({"names": "q_proj"}) == ["passes[0] (X).names: expected a list of strings, got string 'q_proj'"]


def test_union_of_string_and_list():
    assert structure_strict({"either": "all-linear"}, Opts, "p").either == "all-linear"
    assert structure_strict({"either": ["q", "v"]}, Opts, "p").either == ["q", "v"]
    assert "either: expected a string or a list of strings, got integer 3" in problems({"either": 3})[0]


def test_nested_paths_for_list_items_and_tables():
    found = problems({"names": ["a", 1], "table": {"x": "y"}})
    assert "passes[0] (X).names[1]: expected a string, got integer 1" in found
    assert "passes[0] (X).table.x: expected an integer, got string 'y'" in found


def test_unknown_key_with_hint_and_all_errors_at_once():
    found = problems({"alhpa": 1, "r": 0, "flgg": True})
    assert "passes[0] (X).alhpa: unknown key (did you mean 'alpha'?)" in found
    assert "passes[0] (X).flgg: unknown key (did you mean 'flag'?)" in found
    assert "passes[0] (X).r: must be > 0, got 0" in found
    assert len(found) == 3


def test_missing_required_field():
    found = problems({}, HfModel, "model")
    assert found == ["model.path: missing (required: model folder, or a hub id where a hub is reachable)"]


def test_cross_field_check_is_reported_at_the_table():
    found = problems({"type": "jsonl", "path": "x", "text_field": "a", "text_template": "{b}"}, DataConfig, "data.train")
    assert found == ["data.train: set only one of text_field, text_template, messages_field (got text_field, text_template)"]


def test_did_you_mean_is_case_insensitive_fallback():
    assert did_you_mean("LORA", ["LoRA", "QLoRA"]) == " (did you mean 'LoRA'?)"
    assert did_you_mean("zzz", ["LoRA"]) == ""


def test_config_error_message_lists_everything():
    error = ConfigError(["a: x", "b: y"], source="run.toml")
    assert str(error) == "run.toml: 2 problems\n  a: x\n  b: y"


def test_package_scheme_finds_a_folder_inside_an_installed_package_without_importing_it():
    from hostkit.config import resolve_path

    resolved = resolve_path("package:hostkit_echo/config.py", __import__("pathlib").Path("/"))
    assert resolved.endswith("hostkit_echo/config.py")
    assert resolve_path("package:not_a_package_at_all", __import__("pathlib").Path("/")) == "package:not_a_package_at_all"
