"""plugins.toml: the plugin set of a workspace.

```toml
[plugins.lora]
path = "peft_plugins/lora"          # or: requirement = "hostkit-lora>=0.1"
provides = ["LoRA"]                 # lets the host say what to install for a pass type
enabled = true

[plugins.lora.defaults.LoRA]        # defaults under the run file's values
r = 16

[libraries.adapters]                # a library plugins depend on (no entry point)
path = "peft_plugins/adapters"
```

The host reads ``plugins.toml`` from the working directory (or ``--plugins``).
Disabled plugins are not imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from hostkit.converter import structure_strict
from hostkit.errors import ConfigError
from hostkit.options import option
from hostkit.tables import read_toml

FILE_NAME = "plugins.toml"


@attrs.frozen
class PluginDecl:
    """One ``[plugins.NAME]`` table."""

    path: str | None = option(None, help="local folder of the plugin distribution (relative to plugins.toml)", path=True)
    requirement: str | None = option(None, help="pip requirement, e.g. \"hostkit-lora>=0.1\"")
    distribution: str | None = option(None, help="distribution name (default: hostkit-NAME)")
    provides: list[str] = option(factory=list, help="pass types the plugin provides (for install hints)")
    extras: list[str] = option(factory=list, help="optional extras to install, e.g. [\"lightning\"]")
    enabled: bool = option(True, help="false: never import this plugin")
    defaults: dict[str, dict[str, Any]] = option(factory=dict, help="per pass type: default options")

    def __attrs_post_init__(self) -> None:
        if self.path and self.requirement:
            raise ValueError("set path or requirement, not both")


@attrs.frozen
class LibraryDecl:
    """One ``[libraries.NAME]`` table: a distribution plugins depend on, installed with them."""

    path: str | None = option(None, help="local folder of the distribution (relative to plugins.toml)", path=True)
    requirement: str | None = option(None, help="pip requirement, e.g. \"hostkit-adapters>=0.1\"")

    def __attrs_post_init__(self) -> None:
        if bool(self.path) == bool(self.requirement):
            raise ValueError("set path or requirement (one of them)")


@attrs.frozen
class _PluginsFile:
    plugins: dict[str, PluginDecl] = attrs.field(factory=dict)
    libraries: dict[str, LibraryDecl] = attrs.field(factory=dict)


@attrs.frozen
class Workspace:
    """The parsed plugins.toml (or an empty one)."""

    source: Path | None = None
    plugins: dict[str, PluginDecl] = attrs.field(factory=dict)
    libraries: dict[str, LibraryDecl] = attrs.field(factory=dict)

    @classmethod
    def load(cls, path: Path | None = None, *, required: bool = False) -> "Workspace":
        """Read ``path`` (default ``./plugins.toml``); absent and not required: empty."""
        if path is None:
            path = Path.cwd() / FILE_NAME
            if not path.exists():
                return cls()
        elif not path.exists() and not required:
            return cls()
        path = path.resolve()
        raw = read_toml(path)
        try:
            parsed = structure_strict(raw, _PluginsFile, "")
        except ConfigError as exc:
            raise ConfigError([p.lstrip(".") for p in exc.problems], source=str(path)) from None
        plugins = {}
        for name, decl in parsed.plugins.items():
            if decl.path:
                decl = attrs.evolve(decl, path=str((path.parent / decl.path).resolve()))
            plugins[name] = decl
        libraries = {name: attrs.evolve(lib, path=str((path.parent / lib.path).resolve())) if lib.path else lib
                     for name, lib in parsed.libraries.items()}
        return cls(source=path, plugins=plugins, libraries=libraries)

    def disabled(self) -> set[str]:
        return {name for name, decl in self.plugins.items() if not decl.enabled}

    def distribution_of(self, name: str) -> str:
        decl = self.plugins.get(name)
        return (decl and decl.distribution) or f"hostkit-{name.replace('_', '-')}"

    def provider_of(self, pass_type: str) -> tuple[str, PluginDecl] | None:
        """The declared plugin that provides ``pass_type`` (case-insensitive)."""
        for name, decl in self.plugins.items():
            if pass_type.casefold() in (p.casefold() for p in decl.provides):
                return name, decl
        return None

    def install_hint(self, name: str) -> str:
        decl = self.plugins[name]
        if decl.path:
            return f"pip install {_relative(decl.path)}"
        return f"pip install '{decl.requirement or self.distribution_of(name)}'"

    def defaults_for(self, pass_type: str) -> dict[str, Any]:
        """Merged defaults of every enabled plugin for ``pass_type``."""
        merged: dict[str, Any] = {}
        for decl in self.plugins.values():
            if not decl.enabled:
                continue
            for key, values in decl.defaults.items():
                if key.casefold() == pass_type.casefold():
                    merged = deep_merge(merged, values)
        return merged

    def pip_args(self, editable: bool = False) -> list[str]:
        """Arguments for ``pip install`` that install every library and every enabled plugin.

        Libraries come first and in the same command, so that a plugin's dependency on a
        local library (``hostkit-adapters``) resolves to the local folder, not to an index.
        """
        args = []
        for lib in self.libraries.values():
            if lib.path:
                args += (["-e", lib.path] if editable else [lib.path])
            else:
                args.append(lib.requirement)
        for name, decl in self.plugins.items():
            if not decl.enabled:
                continue
            extras = f"[{','.join(decl.extras)}]" if decl.extras else ""
            if decl.path:
                args += (["-e", decl.path + extras] if editable else [decl.path + extras])
            else:
                requirement = decl.requirement or self.distribution_of(name)
                args.append(requirement if not extras else requirement.replace(self.distribution_of(name), self.distribution_of(name) + extras, 1))
        return args


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested tables are merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _relative(path: str) -> str:
    try:
        rel = Path(path).relative_to(Path.cwd())
        return f"./{rel}"
    except ValueError:
        return path


__all__ = ["ConfigError", "LibraryDecl", "PluginDecl", "Workspace", "deep_merge"]
