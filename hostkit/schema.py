"""``hostkit schema PASS``: a commented TOML template (and README option rows) generated from a config class."""

from __future__ import annotations

import json
import typing
from typing import Any

import attrs

from hostkit.converter import _type_name
from hostkit.options import help_of


def field_summary(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each field, for schema output and README tables."""
    hints = typing.get_type_hints(cls)
    rows = []
    for field in attrs.fields(cls):
        if field.default is attrs.NOTHING:
            default = "required"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = repr(field.default.factory())
        else:
            default = repr(field.default)
        rows.append((field.name, _type_name(hints[field.name]), default, help_of(field)))
    return rows


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    return json.dumps(str(value))


def toml_template(spec: Any) -> str:
    """``[[passes]]`` with every option, its help, type and default."""
    lines = [f"# {spec.name}: {spec.summary}"]
    if spec.plugin:
        lines.append(f"# plugin: {spec.plugin.describe()}; runs on: {spec.requires.hardware}")
    if spec.requires.notes:
        lines.append(f"# note: {spec.requires.notes}")
    if spec.input_requires:
        lines.append(f"# its input must have: {', '.join(spec.input_requires)}")
    lines += ["[[passes]]", f"type = {json.dumps(spec.name)}"]
    return _fields(spec.config_cls, lines)


def table_template(cls: type, header: str, title: str) -> str:
    """A host table (``[data.NAME]``, ``[output]``, ``[model]``) with every option."""
    return _fields(cls, [f"# {title}", header])


def _fields(cls: type, lines: list[str]) -> str:
    for field, (name, type_name, default, help_text) in zip(attrs.fields(cls), field_summary(cls)):
        lines.append("")
        if help_text:
            lines.append(f"# {help_text}")
        lines.append(f"# type: {type_name}; default: {default}")
        if field.default is attrs.NOTHING:
            lines.append(f"# {name} = ...  (required)")
            continue
        value = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default  # type: ignore[arg-type]
        if value is None:
            lines.append(f"# {name} = ")
        elif isinstance(value, dict) and not value:
            lines.append(f"# [passes.{name}]")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def markdown_table(cls: type) -> str:
    """The option table of a plugin README, generated from its config class."""
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for name, type_name, default, help_text in field_summary(cls):
        cell = help_text.replace("|", "\\|")
        rows.append(f"| `{name}` | {type_name} | `{default}` | {cell} |")
    return "\n".join(rows) + "\n"
