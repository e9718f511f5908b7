"""The plugin host: discovery, loading, registration and the typed hook facade.

Each entry point of the ``hostkit.plugins`` group is loaded in its own ``try``:
a plugin that fails to import, fails ``check_pending()`` or fails to register is
recorded as *broken* (with its distribution, version and error) and nothing else
breaks. There is no module-level plugin manager: a :class:`PluginHost` is built
and passed around, so tests make their own.

``HOSTKIT_LOAD_PLUGINS`` unset loads every plugin, empty loads none, and a
comma list loads only those; ``HOSTKIT_DISABLE_PLUGINS`` is a comma list of
plugins never to load.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from hostkit import __version__, hookspecs
from hostkit.errors import PluginLoadError
from hostkit.registry import DuplicateRegistration, PluginInfo, Registrar, Registry, describe_providers
from hostkit.workspace import Workspace

if TYPE_CHECKING:  # pragma: no cover - typing only
    from hostkit.runner import RunContext, StepContext, StepRecord
    from hostkit.tables import StepConfig

ENTRY_POINT_GROUP = "hostkit.plugins"
PROJECT = "hostkit"

hookimpl = pluggy.HookimplMarker(PROJECT)


@attrs.define
class PluginRecord:
    """What the host knows about one plugin, loaded or not."""

    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    status: str = "loaded"  # loaded | broken | disabled | not installed | internal
    error: str | None = None
    warning: str | None = None
    provides: list[str] = attrs.field(factory=list)
    declared: bool = False

    @property
    def info(self) -> PluginInfo:
        return PluginInfo(self.name, self.distribution, self.version)

    def describe(self) -> str:
        return self.info.describe()

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class HookCaller:
    """The only place that calls ``pm.hook``: keyword arguments, all of them, always.

    Observer hooks are called one implementation at a time: an observer of a
    third-party plugin that raises is reported as a warning naming the plugin
    and the run goes on (a broken progress bar must not end a two-hour
    training); the host's own observers (manifest, progress) still fail loudly.
    """

    def __init__(self, pm: pluggy.PluginManager):
        self._hook = pm.hook
        self.observer_errors: list[str] = []

    def _notify(self, hook_name: str, /, **kwargs: Any) -> None:
        caller = getattr(self._hook, hook_name)
        impls = caller.get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            caller(**kwargs)  # wrappers need pluggy's own call loop
            return
        for impl in reversed(impls):  # pluggy's order: tryfirst and last registered first
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - reported below
                if impl.plugin_name.startswith("hostkit."):
                    raise
                message = f"plugin {impl.plugin_name!r}: {hook_name} failed: {type(exc).__name__}: {exc}"
                if message not in self.observer_errors:
                    self.observer_errors.append(message)
                    print(f"warning: {message}", file=sys.stderr)

    def load_model(self, *, model: Any, context: "RunContext") -> Any:
        return self._hook.hostkit_load_model(model=model, context=context)

    def run_pass(self, *, pass_type: str, config: Any, model: Any, context: "StepContext") -> Any:
        """Run a step: the host's built-in implementation calls the step's ``PassSpec.run``;
        plugins' ``wrapper=True`` implementations (timing, capture) see the call."""
        return self._hook.hostkit_run_pass(pass_type=pass_type, config=config, model=model, context=context)

    def run_started(self, *, context: "RunContext", steps: "list[StepConfig]") -> None:
        self._notify("hostkit_run_started", context=context, steps=steps)

    def step_started(self, *, context: "StepContext") -> None:
        self._notify("hostkit_step_started", context=context)

    def step_finished(self, *, context: "StepContext", record: "StepRecord") -> None:
        self._notify("hostkit_step_finished", context=context, record=record)

    def step_failed(self, *, context: "StepContext", error: BaseException) -> None:
        self._notify("hostkit_step_failed", context=context, error=error)

    def metric(self, *, context: "StepContext", name: str, value: Any, step: int | None) -> None:
        self._notify("hostkit_metric", context=context, name=name, value=value, step=step)

    def progress(self, *, context: "StepContext", message: str, current: int | None, total: int | None) -> None:
        self._notify("hostkit_progress", context=context, message=message, current=current, total=total)

    def run_finished(self, *, context: "RunContext", records: "list[StepRecord]", error: BaseException | None) -> None:
        self._notify("hostkit_run_finished", context=context, records=records, error=error)


def _env_list(name: str, env: dict[str, str]) -> set[str] | None:
    if name not in env:
        return None
    return {item.strip() for item in env[name].split(",") if item.strip()}


class PluginHost:
    """A pluggy manager, the registry of contributions and the plugin records."""

    def __init__(self, workspace: Workspace | None = None):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.records: dict[str, PluginRecord] = {}
        self.workspace = workspace or Workspace()
        self.hooks = HookCaller(self.pm)
        self.notices: list[str] = []  # warnings about how the plugins were chosen (HOSTKIT_* variables)

    # -- construction ---------------------------------------------------------

    @classmethod
    def isolated(cls, workspace: Workspace | None = None, *, internal: bool = True) -> "PluginHost":
        """A host with only the built-in plugins: no entry-point scan (tests use this)."""
        host = cls(workspace)
        if internal:
            host._register_internal()
        return host

    @classmethod
    def discover(cls, workspace: Workspace | None = None, env: dict[str, str] | None = None,
                 *, quiet: bool = False) -> "PluginHost":
        """Built-ins plus every allowed entry point of ``hostkit.plugins``."""
        host = cls.isolated(workspace)
        host.load_entry_points(env=os.environ if env is None else env, quiet=quiet)
        return host

    def _register_internal(self) -> None:
        from hostkit.builtin import INTERNAL_PLUGINS

        for name, target in INTERNAL_PLUGINS:
            module_path, _, class_name = target.partition(":")
            module = importlib.import_module(module_path)
            plugin = getattr(module, class_name)() if class_name else module
            record = PluginRecord(name=name, distribution="hostkit-core", version=__version__,
                                  module=target, status="internal")
            self.add_plugin(plugin, record)

    def load_entry_points(self, env: dict[str, str] | os._Environ, quiet: bool = False) -> None:
        env = dict(env)
        only = _env_list("HOSTKIT_LOAD_PLUGINS", env)
        switched_off = _env_list("HOSTKIT_DISABLE_PLUGINS", env) or set()
        # plugin names match like pass types: case-insensitively
        only_folded = {n.casefold() for n in only} if only is not None else None
        disabled = {n.casefold() for n in switched_off | self.workspace.disabled()}
        seen = set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            record = PluginRecord(
                name=ep.name,
                distribution=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None,
                module=ep.value,
                declared=ep.name in self.workspace.plugins,
            )
            if (only_folded is not None and ep.name.casefold() not in only_folded) or ep.name.casefold() in disabled:
                record.status = "disabled"
                if only_folded is not None and ep.name.casefold() not in only_folded:
                    record.error = f"disabled: not in HOSTKIT_LOAD_PLUGINS={env['HOSTKIT_LOAD_PLUGINS']}"
                elif ep.name.casefold() in {n.casefold() for n in switched_off}:
                    record.error = f"disabled by HOSTKIT_DISABLE_PLUGINS={env['HOSTKIT_DISABLE_PLUGINS']}"
                self.records[ep.name] = record
                continue
            record.warning = _compatibility_warning(dist)
            try:
                module = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a broken plugin must not break the host
                if isinstance(exc, KeyboardInterrupt):
                    raise
                record.status = "broken"
                record.error = f"Error importing plugin {ep.name!r}: {type(exc).__name__}: {exc}"
                self.records[ep.name] = record
                continue
            self.add_plugin(module, record)
        from hostkit.config import did_you_mean

        known = {name.casefold() for name in seen} | {name.casefold() for name in self.workspace.plugins}
        for variable, names in (("HOSTKIT_LOAD_PLUGINS", only or set()), ("HOSTKIT_DISABLE_PLUGINS", switched_off)):
            for name in sorted(n for n in names if n.casefold() not in known):
                self.notices.append(f"{variable}: no plugin named {name!r} is installed"
                                    f"{did_you_mean(name, sorted(seen))} (installed: {', '.join(sorted(seen)) or 'none'})")
        for name, decl in self.workspace.plugins.items():
            if name not in self.records:
                self.records[name] = PluginRecord(
                    name=name, distribution=self.workspace.distribution_of(name), status="not installed",
                    declared=True, provides=list(decl.provides),
                    error=f"declared in {self.workspace.source} but not installed; {self.workspace.install_hint(name)}",
                )

    def add_plugin(self, plugin: Any, record: PluginRecord) -> PluginRecord:
        """Register ``plugin`` (a module or object with hookimpls) and run its registration.

        Failures are recorded on ``record`` (status ``broken``), never raised.
        """
        self.records[record.name] = record
        try:
            self.pm.register(plugin, name=record.name)
        except Exception as exc:  # noqa: BLE001
            record.status = "broken"
            record.error = f"plugin {record.name!r} ({record.describe()}) is invalid: {exc}"
            return record
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            record.provides = self._would_provide(plugin, record)  # so a run that needs it is exit 3
            self.pm.unregister(plugin)
            record.status = "broken"
            record.error = f"plugin {record.name!r} ({record.describe()}) has a hook that hostkit does not define: {exc}"
            return record
        if record.status != "internal" and _plain_run_pass(self.pm, plugin):
            record.provides = self._would_provide(plugin, record)
            self.pm.unregister(plugin)
            record.status = "broken"
            record.error = (f"plugin {record.name!r} ({record.describe()}) implements hostkit_run_pass as a plain hook; "
                            "the host runs the entry its PassSpec names: register PassSpec(run=\"module:function\") "
                            "instead (a plugin's hostkit_run_pass may only be a wrapper=True hookimpl)")
            return record
        registrar = Registrar(self.registry, record.info)
        for impl in self.pm.hook.hostkit_register.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                impl.function(register=registrar)
            except (Exception, DuplicateRegistration) as exc:  # noqa: BLE001
                self.registry.remove_plugin(record.name)
                self.pm.unregister(plugin)
                record.status = "broken"
                record.error = f"plugin {record.name!r} failed to register: {type(exc).__name__}: {exc}"
                return record
        mine = [s for s in self.registry.passes.values() if s.plugin and s.plugin.name == record.name]
        contested = [specs for specs in self.registry.contested.values()
                     if any(s.plugin and s.plugin.name == record.name for s in specs)]
        record.provides = sorted([s.name for s in mine] + [specs[-1].name for specs in contested])
        for specs in contested:
            self._warn_contest(specs)
        return record

    def _would_provide(self, plugin: Any, record: PluginRecord) -> list[str]:
        """The pass types a plugin that cannot load would register (its hostkit_register run against a scratch registry)."""
        scratch = Registry()
        for impl in self.pm.hook.hostkit_register.get_hookimpls():
            if impl.plugin is plugin:
                try:
                    impl.function(register=Registrar(scratch, record.info))
                except Exception:  # noqa: BLE001 - it is broken anyway; its name is the fallback guess
                    pass
        return sorted(scratch.passes) + sorted(scratch.contested)

    def _warn_contest(self, specs: list[Any]) -> None:
        message = (f"pass type {specs[0].name!r} is registered by {describe_providers(specs)}: a run that uses it "
                   "stops (exit 3); disable one of them (enabled = false in plugins.toml, or HOSTKIT_DISABLE_PLUGINS)")
        for spec in specs:
            record = self.records.get(spec.plugin.name) if spec.plugin else None
            if record is not None:
                kept = [w for w in (record.warning or "").split("\n") if w and f"pass type {specs[0].name!r} " not in w]
                record.warning = "\n".join([*kept, message])

    # -- queries --------------------------------------------------------------

    def broken(self) -> list[PluginRecord]:
        return [r for r in self.records.values() if r.status == "broken"]

    def provider_problem(self, pass_type: str) -> PluginLoadError | None:
        """A PluginLoadError when two plugins register ``pass_type``, or a broken one would provide it."""
        contest = self.registry.contest(pass_type)
        if contest:
            return PluginLoadError(
                f"pass type {contest[0].name!r} is registered by {describe_providers(contest)}; "
                "disable one of them (enabled = false in plugins.toml, or HOSTKIT_DISABLE_PLUGINS)")
        for record in self.records.values():
            if record.status == "broken" and _could_provide(record, pass_type, self.workspace):
                return PluginLoadError(
                    f"pass type {pass_type!r} needs plugin {record.name!r} ({record.describe()}), which cannot load: {record.error}"
                )
        return None

    def plugin_header(self) -> str:
        loaded = [r for r in self.records.values() if r.status == "loaded"]
        return "plugins: " + (", ".join(f"{r.name}-{r.version or '?'}" for r in loaded) or "none")


def _plain_run_pass(pm: pluggy.PluginManager, plugin: Any) -> bool:
    return any(impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper)
               for impl in pm.hook.hostkit_run_pass.get_hookimpls())


def _could_provide(record: PluginRecord, pass_type: str, workspace: Workspace) -> bool:
    declared = workspace.plugins.get(record.name)
    names = set(record.provides) | set(declared.provides if declared else [])
    if pass_type.casefold() in (n.casefold() for n in names):
        return True
    # a broken plugin of unknown contents: guess from its name (hostkit-lora provides LoRA)
    return record.name.replace("_", "").casefold() == pass_type.casefold()


def _compatibility_warning(dist: Any) -> str | None:
    """A warning when the plugin's declared hostkit-core range excludes this host."""
    if dist is None:
        return None
    from packaging.requirements import InvalidRequirement, Requirement

    for line in dist.requires or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower().replace("_", "-") == "hostkit-core" and req.specifier:
            if not req.specifier.contains(__version__, prereleases=True):
                return f"declares hostkit-core{req.specifier}, this is hostkit-core {__version__}"
    return None

