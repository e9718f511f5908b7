"""Helpers for declaring pass options as frozen attrs classes.

A plugin's config is a plain ``@attrs.frozen`` class; :func:`option` adds the
one-line help that ``hostkit schema`` and the README tables show. Validators
raise ``ValueError`` with a message; the host attaches the TOML path.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

NOTHING = attrs.NOTHING


def option(default: Any = NOTHING, *, help: str, factory: Callable[[], Any] | None = None,
           validator: Any = None, path: bool = False, hub: bool = False, data: bool = False,
           within: str | None = None, loader: bool = False, folder: bool = False) -> Any:
    """An attrs field with a help line.

    ``path=True`` marks a field holding a file or folder: the host resolves it
    against the run file's folder and fingerprints it for the step cache.
    ``hub=True`` (with ``path``) lets a value of the form ``org/name`` that is
    not a local path stay a hub id.
    ``data=True`` marks a field naming a ``[data.NAME]`` table: the host checks
    that the table exists and fingerprints its files for the step cache.
    ``within="path"`` marks a file name inside the folder another field names:
    the host checks it exists there. ``loader=True`` marks a field that a
    plugin's ``hostkit_load_model`` must turn into something else: a handle that
    still sets it after loading is an error. ``folder=True`` (with ``path``): the
    value must be a folder when it exists (a file there is a validation error).
    """
    metadata = {"help": help, "path": path, "hub": hub, "data": data, "within": within, "loader": loader,
                "folder": folder}
    if factory is not None:
        return attrs.field(factory=factory, validator=validator, metadata=metadata)
    return attrs.field(default=default, validator=validator, metadata=metadata)


def one_of(*choices: Any) -> Callable[[Any, Any, Any], None]:
    """Validator: the value is one of ``choices`` (``None`` passes for optional fields)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and value not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")

    return check


def positive(_instance: Any, attribute: Any, value: Any) -> None:
    """Validator: a number greater than zero (``None`` passes)."""
    if value is not None and not value > 0:
        raise ValueError(f"must be > 0, got {value!r}")


def non_negative(_instance: Any, attribute: Any, value: Any) -> None:
    """Validator: a number >= 0 (``None`` passes)."""
    if value is not None and value < 0:
        raise ValueError(f"must be >= 0, got {value!r}")


def in_range(low: float, high: float) -> Callable[[Any, Any, Any], None]:
    """Validator: ``low <= value <= high``, both bounds inclusive (``None`` passes)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and not (low <= value <= high):
            raise ValueError(f"must be between {low} and {high}, got {value!r}")

    return check


def help_of(field: attrs.Attribute) -> str:
    return (field.metadata or {}).get("help", "")


def is_path_field(field: attrs.Attribute) -> bool:
    return bool((field.metadata or {}).get("path"))


def is_folder_field(field: attrs.Attribute) -> bool:
    return bool((field.metadata or {}).get("folder"))


def no_key(key: str, why: str) -> Callable[[Any, Any, Any], None]:
    """Validator of a table option: ``key`` may not be set in it (``why`` says where it belongs)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, dict) and key in value:
            raise ValueError(f"{key} may not be set here: {why}")

    return check


def is_data_field(field: attrs.Attribute) -> bool:
    return bool((field.metadata or {}).get("data"))
