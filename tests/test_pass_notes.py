"""Small authoring gaps: ``Requirements(notes=...)`` and ``input_requires`` shown by ``hostkit passes`` and
``hostkit schema``; ``in_range`` bounds inclusive; validators of unset optional options get None."""

from __future__ import annotations

import sys

import attrs
import pytest

from hostkit import PassSpec, Requirements, hookimpl, in_range, option
from hostkit.cli import main
from hostkit.converter import structure_strict
from hostkit.errors import ConfigError
from hostkit.testing import register_plugin

SEEN = []


def _record(_instance, _attribute, value):
    SEEN.append(value)


@attrs.frozen
class NotedConfig:
    amount: float = option(0.5, help="a fraction", validator=in_range(0.0, 1.0))
    limit: int | None = option(None, help="an optional limit", validator=_record)


@hookimpl
def hostkit_register(register):
    register.pass_type(PassSpec(name="Noted", config_cls=NotedConfig, summary="a pass with a note", run="x:run",
                                requires=Requirements(notes="needs a model with a chat template"),
                                input_requires=("adapter_path",)))


@pytest.fixture
def host(plugin_host):
    register_plugin(plugin_host, sys.modules[__name__], "noted", distribution="hostkit-noted", version="0.1.0")
    return plugin_host


def test_passes_and_schema_show_the_notes(host, capsys):
    assert main(["passes"], host=host) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("Noted "))
    assert "a pass with a note" in lines[row] and "[hostkit-noted, CPU]" in lines[row]
    assert lines[row + 1].strip() == "note: needs a model with a chat template"
    assert main(["schema", "Noted"], host=host) == 0
    template = capsys.readouterr().out
    assert "# note: needs a model with a chat template\n" in template
    assert "# its input must have: adapter_path\n" in template


def test_in_range_bounds_are_inclusive():
    assert structure_strict({"amount": 0.0}, NotedConfig, "p").amount == 0.0
    assert structure_strict({"amount": 1.0}, NotedConfig, "p").amount == 1.0
    with pytest.raises(ConfigError, match=r"p.amount: must be between 0.0 and 1.0, got 1.0001"):
        structure_strict({"amount": 1.0001}, NotedConfig, "p")


def test_an_unset_optional_option_reaches_its_validator_as_none():
    SEEN.clear()
    assert structure_strict({}, NotedConfig, "p").limit is None
    assert SEEN == [None]  # as the guide says: let None pass
    structure_strict({"limit": 3}, NotedConfig, "p")
    assert SEEN == [None, 3]
