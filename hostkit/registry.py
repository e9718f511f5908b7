"""What plugins provide: pass types, exporters, model types, data types and CLI commands.

Plugins describe each contribution with a small frozen record and hand it to the
``register`` callback of :func:`hostkit.hookspecs.hostkit_register`. The host
keeps them in a :class:`Registry`, keyed case-insensitively by name, together
with the plugin that provided them.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import Any, Callable

import attrs


@attrs.frozen
class Requirements:
    """What a pass needs from the machine, checked before a run starts.

    ``modules`` maps an import name to the pip requirement that provides it
    (``{"bitsandbytes": "bitsandbytes>=0.50"}``). ``gpu`` is ``"no"``,
    ``"optional"`` or ``"required"``.
    """

    modules: dict[str, str] = attrs.field(factory=dict)
    gpu: str = attrs.field(default="no", validator=attrs.validators.in_(("no", "optional", "required")))
    notes: str = ""

    def missing_modules(self) -> dict[str, str]:
        """Import name -> pip requirement, for every module that is not installed."""
        missing = {}
        for module, requirement in self.modules.items():
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing[module] = requirement
        return missing

    @property
    def hardware(self) -> str:
        return {"no": "CPU", "optional": "CPU/GPU", "required": "GPU"}[self.gpu]


@attrs.frozen
class PluginInfo:
    """Where a contribution comes from, for messages and the manifest."""

    name: str
    distribution: str | None = None
    version: str | None = None

    def describe(self) -> str:
        if self.distribution:
            return f"{self.distribution} {self.version or '?'}"
        return self.name


_ENTRY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _valid_run(_instance: Any, _attribute: Any, value: Any) -> None:
    if callable(value) or (isinstance(value, str) and _ENTRY.fullmatch(value)):
        return
    raise ValueError(f"run must be a callable or a \"module:function\" string, got {value!r}")


@attrs.frozen
class PassSpec:
    """A pass type (or an exporter) a plugin provides.

    ``run`` is the pass's entry, ``run(config, model, context) -> handle``: a
    callable, or a ``"module:function"`` string imported only when the pass runs
    (so that registering stays light). The host calls exactly this entry for a
    step of this type; wrappers of ``hostkit_run_pass`` see the call.

    ``check`` (optional) receives the structured config and a
    :class:`hostkit.config.CheckContext` and returns a list of problems, each
    ``"<option>: <message>"``; it runs at validation time and must not import
    heavy libraries.

    What the plan can see of handles: ``input_requires`` names handle fields the
    input must have set (``("adapter_path",)``: the pass needs an unmerged
    adapter); ``output_sets`` / ``output_clears`` name the fields the pass's
    output has set / unset. ``hostkit validate`` follows these facts from the
    ``[model]`` table through the steps and reports a step whose input lacks a
    required field. A pass that declares neither makes its output's fields
    unknown, and later steps are not blamed for them.
    """

    name: str
    config_cls: type
    summary: str
    run: str | Callable[[Any, Any, Any], Any] = attrs.field(validator=_valid_run)
    requires: Requirements = attrs.field(factory=Requirements)
    input_types: tuple[str, ...] = ("HfModel",)
    output_type: str | None = None  # None: same type as the input
    check: Callable[[Any, Any], list[str]] | None = None
    kind: str = "pass"
    plugin: PluginInfo | None = None
    input_requires: tuple[str, ...] = ()
    output_sets: tuple[str, ...] = ()
    output_clears: tuple[str, ...] = ()

    def entry(self) -> Callable[[Any, Any, Any], Any]:
        """The run callable, importing its module now when ``run`` is a string."""
        if callable(self.run):
            return self.run
        module_name, _, attr = self.run.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        return target


@attrs.frozen
class ModelTypeSpec:
    """A model handle type usable as ``[model] type = ...`` and between passes."""

    name: str
    cls: type
    summary: str = ""
    plugin: PluginInfo | None = None


@attrs.frozen
class DataTypeSpec:
    """A data type usable as ``[data.NAME] type = ...``.

    ``config_cls`` is a frozen attrs subclass of :class:`hostkit.data.DataTable`
    holding the type's options; one class may serve several type names
    (jsonl, csv, parquet ... read the same options).
    """

    name: str
    config_cls: type
    summary: str = ""
    plugin: PluginInfo | None = None


@attrs.frozen
class CommandSpec:
    """An extra ``hostkit`` subcommand contributed by a plugin.

    ``configure(parser)`` adds arguments to an ``argparse`` sub-parser (keep it
    light: it runs for ``--help``); ``run(args)`` does the work and returns an
    exit code.
    """

    name: str
    help: str
    configure: Callable[[Any], None]
    run: Callable[[Any], int]
    plugin: PluginInfo | None = None


BUILTIN_COMMANDS = frozenset({"run", "validate", "plugins", "passes", "schema", "new-plugin"})


class Registrar:
    """The ``register`` object a plugin's ``hostkit_register`` receives."""

    def __init__(self, registry: "Registry", plugin: PluginInfo):
        self._registry = registry
        self._plugin = plugin

    def pass_type(self, spec: PassSpec) -> None:
        self._registry.add_pass(attrs.evolve(spec, kind="pass", plugin=self._plugin))

    def exporter(self, spec: PassSpec) -> None:
        self._registry.add_pass(attrs.evolve(spec, kind="exporter", plugin=self._plugin))

    def model_type(self, spec: ModelTypeSpec) -> None:
        # handles are tagged with their class name in JSON (manifest, step cache)
        if spec.name != spec.cls.__name__:
            raise ValueError(f"model type {spec.name!r} must be registered under its class name {spec.cls.__name__!r}")
        self._registry.add_model_type(attrs.evolve(spec, plugin=self._plugin))

    def data_type(self, spec: DataTypeSpec) -> None:
        from hostkit.data import DataTable

        if not (isinstance(spec.config_cls, type) and issubclass(spec.config_cls, DataTable)):
            raise ValueError(f"data type {spec.name!r}: config_cls must subclass hostkit.data.DataTable")
        self._registry.add_data_type(attrs.evolve(spec, plugin=self._plugin))

    def command(self, spec: CommandSpec) -> None:
        if spec.name in BUILTIN_COMMANDS:
            raise ValueError(f"command {spec.name!r} is one of hostkit's own commands")
        self._registry.add_command(attrs.evolve(spec, plugin=self._plugin))


class DuplicateRegistration(Exception):
    pass


def describe_providers(specs: list[Any]) -> str:
    return " and ".join(s.plugin.describe() if s.plugin else "the host" for s in specs)


class Registry:
    """All contributions of the loaded plugins, looked up case-insensitively.

    A pass type registered by two plugins is *contested*: it is in neither
    plugin's hands (:meth:`find_pass` returns ``None``) but in :attr:`contested`,
    so a run that needs it stops naming both, and every other pass still works.
    """

    def __init__(self) -> None:
        self.passes: dict[str, PassSpec] = {}
        self.contested: dict[str, list[PassSpec]] = {}
        self.model_types: dict[str, ModelTypeSpec] = {}
        self.data_types: dict[str, DataTypeSpec] = {}
        self.commands: dict[str, CommandSpec] = {}

    def _add(self, table: dict, key: str, item: Any, what: str) -> None:
        folded = key.casefold()
        if folded in table:
            other = table[folded].plugin
            raise DuplicateRegistration(
                f"{what} {key!r} is already provided by {other.describe() if other else 'the host'}"
            )
        table[folded] = item

    def add_pass(self, spec: PassSpec) -> None:
        folded = spec.name.casefold()
        if folded in self.contested:
            self.contested[folded].append(spec)
        elif folded in self.passes:
            self.contested[folded] = [self.passes.pop(folded), spec]
        else:
            self.passes[folded] = spec

    def contest(self, name: str) -> list[PassSpec]:
        """The specs of every plugin that registered pass type ``name``, when more than one did."""
        return list(self.contested.get(name.casefold(), []))

    def add_model_type(self, spec: ModelTypeSpec) -> None:
        self._add(self.model_types, spec.name, spec, "model type")

    def add_data_type(self, spec: DataTypeSpec) -> None:
        self._add(self.data_types, spec.name, spec, "data type")

    def find_data_type(self, name: str) -> DataTypeSpec | None:
        return self.data_types.get(name.casefold())

    def add_command(self, spec: CommandSpec) -> None:
        self._add(self.commands, spec.name, spec, "command")

    def find_pass(self, name: str) -> PassSpec | None:
        return self.passes.get(name.casefold())

    def find_model_type(self, name: str) -> ModelTypeSpec | None:
        return self.model_types.get(name.casefold())

    def handle_types(self) -> dict[str, type]:
        """JSON tag -> handle class, for :func:`hostkit.handles.from_json`."""
        return {spec.name: spec.cls for spec in self.model_types.values()}

    def model_type_of(self, handle: Any) -> ModelTypeSpec | None:
        for spec in self.model_types.values():
            if type(handle) is spec.cls:
                return spec
        return None

    def remove_plugin(self, plugin_name: str) -> None:
        """Forget everything a plugin registered (used when its registration fails half-way)."""
        for table in (self.passes, self.model_types, self.data_types, self.commands):
            for key in [k for k, v in table.items() if v.plugin and v.plugin.name == plugin_name]:
                del table[key]
        for key, specs in list(self.contested.items()):
            left = [s for s in specs if not (s.plugin and s.plugin.name == plugin_name)]
            if len(left) == 1:
                del self.contested[key]
                self.passes[key] = left[0]
            else:
                self.contested[key] = left
