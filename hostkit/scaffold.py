"""Plugin authoring tools: ``hostkit new-plugin`` and README option tables.

:func:`scaffold` renders the package template in ``hostkit/templates/plugin/``
(plain files; ``{{placeholders}}`` filled by ``str.replace``, ``__module__`` and
``__name__`` in paths replaced, ``.tmpl`` dropped) into a new folder
``hostkit-NAME/``: a pass plugin that installs, passes its own tests and runs
from TOML before its author changes a line.

A plugin README marks each option table::

    <!-- options:PassType -->
    | option | type | default | meaning |
    ...
    <!-- /options -->

and :func:`update_readme` rewrites what lies between the markers from the pass's
attrs config class (:func:`hostkit.schema.markdown_table`), so the README cannot
drift from the code. From a shell::

    python -m hostkit.scaffold update-readme PLUGIN_FOLDER [...]   # rewrite the tables
    python -m hostkit.scaffold update-readme --check PLUGIN_FOLDER  # exit 1 if one is stale
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from hostkit.errors import ConfigError

TEMPLATE = Path(__file__).parent / "templates" / "plugin"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PASS_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
OPTIONS_BLOCK = re.compile(
    r"(?P<open><!-- options:(?P<pass_type>[A-Za-z0-9_]+) -->[ \t]*\n)(?P<body>.*?)(?P<close><!-- /options -->)", re.S
)


def names(name: str, pass_type: str | None = None) -> dict[str, str]:
    """The placeholders of the template for plugin ``name``.

    ``name`` is the short name (``magnitude_prune`` or ``magnitude-prune``; a
    leading ``hostkit-`` is dropped): entry-point name ``magnitude_prune``,
    distribution ``hostkit-magnitude-prune``, module ``hostkit_magnitude_prune``,
    pass type ``MagnitudePrune`` unless given.
    """
    short = name.strip()
    for prefix in ("hostkit-", "hostkit_"):
        if short.startswith(prefix):
            short = short[len(prefix):]
    short = short.replace("-", "_")
    if not _NAME.match(short):
        raise ConfigError(f"new-plugin: {name!r} is not a plugin name: use lower-case letters, digits, '-' or '_', "
                          "starting with a letter (e.g. 'prune' or 'magnitude-prune')")
    if pass_type is None:
        pass_type = "".join(part[:1].upper() + part[1:] for part in short.split("_") if part)
    if not _PASS_TYPE.match(pass_type):
        raise ConfigError(f"new-plugin: --pass-type {pass_type!r} must be letters, digits and '_', starting with a letter")
    return {
        "name": short,
        "dist": "hostkit-" + short.replace("_", "-"),
        "module": "hostkit_" + short,
        "pass_type": pass_type,
        "pass_type_lower": pass_type.lower(),
        "config_class": f"{pass_type}Config",
    }


def _render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _target(relative: Path, values: dict[str, str]) -> Path:
    parts = []
    for part in relative.parts:
        part = part.replace("__module__", values["module"]).replace("__name__", values["name"])
        if part.endswith(".tmpl"):
            part = part[: -len(".tmpl")]
        if part == "gitignore":
            part = ".gitignore"
        parts.append(part)
    return Path(*parts)


def scaffold(name: str, dest: str | Path = ".", *, pass_type: str | None = None) -> Path:
    """Create ``dest/hostkit-NAME/`` from the plugin template and return its path.

    The package provides one pass type on ``HfModel`` (it scales weights: a
    placeholder technique), with its config, README (option table filled in),
    an example run file and tests (the conformance suite and behaviour tests).
    Raises :class:`ConfigError` for a bad name or an existing non-empty folder.
    """
    values = names(name, pass_type)
    root = Path(dest) / values["dist"]
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"new-plugin: {root} already exists and is not empty")
    files = sorted(p for p in TEMPLATE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    if not files:
        raise ConfigError(f"new-plugin: the plugin template is missing from {TEMPLATE} (a broken hostkit-core install?)")
    for source in files:
        target = root / _target(source.relative_to(TEMPLATE), values)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_render(source.read_text(encoding="utf-8"), values), encoding="utf-8")
    config_cls = _load_class(root / values["module"] / "config.py", values["config_class"])
    readme = root / "README.md"
    readme.write_text(render_options(readme.read_text(encoding="utf-8"), {values["pass_type"]: config_cls}),
                      encoding="utf-8")
    return root


def _load_class(path: Path, class_name: str) -> type:
    """``class_name`` from the Python file ``path``, without installing its package.

    The module stays in ``sys.modules`` under a private name: attrs and typing
    resolve the class's string annotations through it.
    """
    module_name = f"_hostkit_scaffold_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return getattr(module, class_name)


# -- README option tables ---------------------------------------------------------


def option_blocks(text: str) -> dict[str, str]:
    """Pass type -> the text between its ``<!-- options:... -->`` markers."""
    return {m["pass_type"]: m["body"] for m in OPTIONS_BLOCK.finditer(text)}


def render_options(text: str, config_classes: dict[str, type]) -> str:
    """``text`` with the body of each marked option table regenerated from its config class.

    Markers for pass types not in ``config_classes`` are left alone.
    """
    from hostkit.schema import markdown_table

    def replace(match: re.Match) -> str:
        cls = config_classes.get(match["pass_type"])
        if cls is None:
            return match.group(0)
        return match["open"] + markdown_table(cls) + match["close"]

    return OPTIONS_BLOCK.sub(replace, text)


def _entry_points(folder: Path) -> dict[str, str]:
    from hostkit.tables import read_toml
    from hostkit.plugins import ENTRY_POINT_GROUP

    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        raise ConfigError(f"{folder}: no pyproject.toml (expected a plugin distribution folder)")
    project = read_toml(pyproject).get("project", {})
    eps = project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    if not eps:
        raise ConfigError(f"{pyproject}: no [project.entry-points.\"{ENTRY_POINT_GROUP}\"] table")
    return dict(eps)


def plugin_passes(folder: str | Path, host: Any = None) -> dict[str, Any]:
    """Pass type -> :class:`hostkit.PassSpec` of everything the plugin in ``folder`` registers.

    Uses the installed entry points (``host`` defaults to a discovered host).
    A plugin that is not installed is imported from ``folder`` instead and
    registered on an isolated host. A broken plugin raises :class:`ConfigError`
    with its recorded error.
    """
    from hostkit.plugins import PluginHost, PluginRecord

    folder = Path(folder).resolve()
    host = host or PluginHost.discover(env={}, quiet=True)
    specs: dict[str, Any] = {}
    for ep_name, value in _entry_points(folder).items():
        record = host.records.get(ep_name)
        target = host
        if record is None or record.status == "not installed":
            target = PluginHost.isolated(internal=False)
            sys.path.insert(0, str(folder))
            try:
                module = importlib.import_module(value.split(":")[0])
            except Exception as exc:  # noqa: BLE001 - reported with the folder
                raise ConfigError(f"{folder}: cannot import {value}: {type(exc).__name__}: {exc}") from exc
            finally:
                sys.path.remove(str(folder))
            record = target.add_plugin(module, PluginRecord(name=ep_name))
        if record.status != "loaded":
            raise ConfigError(f"{folder}: plugin {ep_name!r} is {record.status}: {record.error}")
        for spec in target.registry.passes.values():
            if spec.plugin and spec.plugin.name == ep_name:
                specs[spec.name] = spec
    return specs


def readme_problems(folder: str | Path, host: Any = None) -> list[str]:
    """Why ``folder/README.md`` does not hold a current option table for each pass type; ``[]`` when it does."""
    from hostkit.schema import markdown_table

    folder = Path(folder)
    readme = folder / "README.md"
    try:
        specs = plugin_passes(folder, host)
    except ConfigError as exc:
        return [str(exc)]
    fix = f"run: python -m hostkit.scaffold update-readme {folder}"
    if not readme.is_file():
        return [f"{readme}: missing (it needs an option table per pass type: {', '.join(sorted(specs))})"]
    blocks = option_blocks(readme.read_text(encoding="utf-8"))
    problems = []
    for pass_type, spec in sorted(specs.items()):
        if pass_type not in blocks:
            problems.append(f"{readme}: no option table for {pass_type} (between '<!-- options:{pass_type} -->' "
                            f"and '<!-- /options -->'); {fix}")
        elif blocks[pass_type] != markdown_table(spec.config_cls):
            problems.append(f"{readme}: the {pass_type} option table differs from {spec.config_cls.__qualname__}; {fix}")
    for pass_type in sorted(set(blocks) - set(specs)):
        problems.append(f"{readme}: option table for {pass_type}, which the plugin does not register "
                        f"(it registers: {', '.join(sorted(specs)) or 'nothing'})")
    return problems


def update_readme(folder: str | Path, host: Any = None) -> bool:
    """Regenerate the option tables of ``folder/README.md``; True when the file changed.

    A pass type without a marked table gets one, appended under an ``## Options``
    heading (move it where it reads best; the markers keep it found).
    """
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        raise ConfigError(f"{readme}: missing; write one (what the technique is, an example run file, outputs) first")
    specs = plugin_passes(folder, host)
    text = readme.read_text(encoding="utf-8")
    missing = [name for name in sorted(specs) if name not in option_blocks(text)]
    if missing:
        text = text.rstrip("\n") + "\n"
        for name in missing:
            heading = "## Options" if len(specs) == 1 else f"## Options of {name}"
            text += f"\n{heading}\n\n<!-- options:{name} -->\n<!-- /options -->\n"
    new = render_options(text, {name: spec.config_cls for name, spec in specs.items()})
    changed = new != readme.read_text(encoding="utf-8")
    if changed:
        readme.write_text(new, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m hostkit.scaffold update-readme [--check] FOLDER...``"""
    parser = argparse.ArgumentParser(prog="python -m hostkit.scaffold")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("update-readme", help="regenerate the option tables in plugin READMEs from their config classes")
    p.add_argument("folders", nargs="+", type=Path, help="plugin distribution folders (with pyproject.toml and README.md)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is missing or stale")
    p = sub.add_parser("new", help="same as `hostkit new-plugin`")
    p.add_argument("name")
    p.add_argument("--pass-type")
    p.add_argument("--dest", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    from hostkit.plugins import PluginHost

    try:
        if args.command == "new":
            print(f"created {scaffold(args.name, args.dest, pass_type=args.pass_type)}")
            return 0
        host = PluginHost.discover(env={}, quiet=True)
        status = 0
        for folder in args.folders:
            if args.check:
                for problem in readme_problems(folder, host):
                    print(problem, file=sys.stderr)
                    status = 1
            else:
                print(f"{folder / 'README.md'}: {'updated' if update_readme(folder, host) else 'up to date'}")
        return status
    except ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
