"""The run-file converter: TOML values in, frozen attrs instances out, every problem at once.

The policy lives in one cattrs converter (:data:`converter`), built from the
hooks below:

* strict leaves: ``"8"`` is not an int, ``8.7`` is not an int, ``"false"`` is
  not a bool; a float option accepts a TOML integer;
* numbers are finite and integers fit in 64 bits, wherever they are: typed
  options and free-form tables (``training_args``) alike (``nan``, ``inf`` and
  ``-inf`` are valid TOML, and a run with them fails late or silently);
* unknown keys are errors with a "did you mean" hint (difflib);
* attrs validator messages are attached to the field's TOML path;
* all problems are collected and raised together as :class:`ConfigError`,
  each prefixed with its path, e.g.
  ``passes[0] (LoRA).training_args.learnin_rate: unknown key (did you mean 'learning_rate'?)``.

cattrs structures every leaf, list, table and union through these hooks, and
attrs classes with its own generated functions (``forbid_extra_keys``, detailed
validation, so that it collects every error of a table); :func:`_attrs_hook` turns
those errors into TOML paths with "did you mean" hints and runs the attrs
validators one field at a time (cattrs would report only the first, without its path).
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Any, Literal, Union

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from hostkit.errors import ConfigError
from hostkit.options import help_of


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



def make_converter() -> cattrs.Converter:
    """The converter with the host's policy (see the module doc)."""
    conv = cattrs.Converter()
    for tp in (int, float, str, bool):
        conv.register_structure_hook(tp, _strict(tp))
    conv.register_structure_hook(Any, lambda v, _: _free_form(v))
    conv.register_structure_hook_factory(_is_union, lambda tp: _union_hook(conv, tp))
    conv.register_structure_hook_factory(_is_literal, _literal_hook)
    conv.register_structure_hook_factory(_is_list, lambda tp: _list_hook(conv, tp))
    conv.register_structure_hook_factory(_is_dict, lambda tp: _dict_hook(conv, tp))
    conv.register_structure_hook_factory(attrs.has, lambda cls: _attrs_hook(conv, cls))
    return conv


def _mismatch(tp: Any, value: Any) -> _Problems:
    return _Problems([("", f"expected {_type_name(tp)}, got {_describe(value)}")])


def _strict(tp: type) -> Any:
    def hook(value: Any, _tp: Any) -> Any:
        if not _matches(value, tp):
            raise _mismatch(tp, value)
        problem = _number_problem(value)
        if problem:
            raise _Problems([("", problem)])
        return float(value) if tp is float else value

    return hook


INT64 = (-(2**63), 2**63 - 1)


def _number_problem(value: Any) -> str | None:
    """NaN and infinities are never an option's value; integers fit in 64 bits (as TOML promises)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        return f"expected an integer that fits in 64 bits, got {value}"
    return None


def _free_form(value: Any) -> Any:
    """A value of type ``Any`` (e.g. inside ``dict[str, Any]``): the number rule, at every depth."""
    problems: list[tuple[str, str]] = []

    def walk(item: Any, path: str) -> None:
        problem = _number_problem(item)
        if problem:
            problems.append((path, problem))
        elif isinstance(item, dict):
            for key, sub in item.items():
                walk(sub, f".{key}" if not path else f"{path}.{key}")
        elif isinstance(item, (list, tuple)):
            for i, sub in enumerate(item):
                walk(sub, f"{path}[{i}]")

    walk(value, "")
    if problems:
        raise _Problems(problems)
    return value


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _union_hook(conv: cattrs.Converter, tp: Any) -> Any:
    members = typing.get_args(tp)

    def hook(value: Any, _tp: Any) -> Any:
        for member in members:
            if _matches(value, member):
                return None if member is type(None) else conv.structure(value, member)
        raise _mismatch(tp, value)

    return hook


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _literal_hook(tp: Any) -> Any:
    def hook(value: Any, _tp: Any) -> Any:
        if value not in typing.get_args(tp) or isinstance(value, bool) != isinstance(typing.get_args(tp)[0], bool):
            raise _mismatch(tp, value)
        return value

    return hook


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)


def _list_hook(conv: cattrs.Converter, tp: Any) -> Any:
    args = typing.get_args(tp)
    item_tp = args[0] if args else Any
    container = tuple if (typing.get_origin(tp) or tp) is tuple else list

    def hook(value: Any, _tp: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _mismatch(tp, value)
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


def _is_dict(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or tp is dict


def _dict_hook(conv: cattrs.Converter, tp: Any) -> Any:
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


def _attrs_hook(conv: cattrs.Converter, cls: type) -> Any:
    """cattrs' own generated structuring of ``cls`` (``forbid_extra_keys``, detailed validation),
    with its errors turned into TOML-path problems and attrs validators run field by field."""
    generated = make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True)
    fields = [f for f in attrs.fields(cls) if f.init]
    hints = typing.get_type_hints(cls)

    def hook(value: Any, _cls: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise _Problems([("", f"expected a table, got {_describe(value)}")])
        try:
            with attrs.validators.disabled():  # run below, one field at a time, each with its path
                instance = generated(value, cls)
        except cattrs.ClassValidationError as exc:
            problems = _class_problems(exc, value, fields, hints)
            faulty = {path.split(".")[1].split("[")[0] for path, _ in problems if path.startswith(".")}
            raise _Problems(problems + _loose_validator_problems(conv, value, fields, hints, faulty)) from None
        except (ValueError, TypeError) as exc:  # cross-field checks in __attrs_post_init__
            raise _Problems([("", str(exc))]) from None
        problems = _validator_problems(instance, fields)
        if problems:
            raise _Problems(problems)
        return instance

    return hook


def _class_problems(exc: cattrs.ClassValidationError, value: dict[str, Any], fields: list[Any],
                    hints: dict[str, Any]) -> list[tuple[str, str]]:
    """cattrs' grouped errors as (path, message): unknown keys first (in the table's order), then fields."""
    names = [f.name for f in fields]
    by_name = {f.name: f for f in fields}
    unknown: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []
    for sub in exc.exceptions:
        if isinstance(sub, ForbiddenExtraKeysError):
            unknown += [(f".{key}", "unknown key" + did_you_mean(key, names)) for key in value if key in sub.extra_fields]
            continue
        name = next((note.name for note in getattr(sub, "__notes__", []) if isinstance(note, AttributeValidationNote)), "")
        if isinstance(sub, KeyError) and name in by_name:
            field = by_name[name]
            problems.append((f".{name}", f"missing (required: {help_of(field) or _type_name(hints[name])})"))
        elif isinstance(sub, _Problems):
            problems += [(f".{name}{p}" if name else p, m) for p, m in sub.items]
        elif not name and isinstance(sub, (ValueError, TypeError)):  # __attrs_post_init__'s cross-field check
            problems.append(("", str(sub)))
        else:
            problems.append((f".{name}" if name else "", f"{type(sub).__name__}: {sub}"))
    return unknown + problems


def _loose_validator_problems(conv: cattrs.Converter, value: dict[str, Any], fields: list[Any],
                              hints: dict[str, Any], faulty: set[str]) -> list[tuple[str, str]]:
    """Validator problems of the fields cattrs did structure, when the table as a whole failed
    (every problem is reported at once)."""
    problems = []
    for field in fields:
        if field.validator is None or field.name in faulty or field.name not in value:
            continue
        try:
            item = conv.structure(value[field.name], hints[field.name])
            field.validator(None, field, item)
        except _Problems:
            continue
        except (ValueError, TypeError) as exc:
            problems.append((f".{field.name}", str(exc)))
    return problems


def _validator_problems(instance: Any, fields: list[Any]) -> list[tuple[str, str]]:
    problems = []
    for field in fields:
        if field.validator is not None:
            try:
                field.validator(instance, field, getattr(instance, field.name))
            except (ValueError, TypeError) as exc:
                problems.append((f".{field.name}", str(exc)))
    return problems


converter = make_converter()


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
