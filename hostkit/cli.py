"""The ``hostkit`` command (also ``python -m hostkit``).

Exit codes: 0 ok, 1 a pass failed, 2 config or usage error, 3 a needed plugin
cannot load. ``--help``, ``plugins``, ``passes``, ``schema`` and ``validate``
never import torch, transformers, peft, bitsandbytes or onnxruntime.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
import json
import sys
from pathlib import Path
from typing import Any

from hostkit import __version__
from hostkit.errors import EXIT_CONFIG, EXIT_OK, EXIT_PASS_FAILED, ConfigError, HostkitError
from hostkit.plugins import PluginHost
from hostkit.workspace import Workspace


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one ERROR line, exit 2 (pytest style)
        self.print_usage(sys.stderr)
        print(f"ERROR: {message}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins", metavar="FILE", help="plugins.toml to use (default: ./plugins.toml if present)")
    p.add_argument("--traceback", action="store_true", help="show full tracebacks")


def build_parser(host: PluginHost) -> argparse.ArgumentParser:
    parser = _Parser(prog="hostkit", description="A minimal host for parameter-efficient fine-tuning and adapter deployment.")
    parser.add_argument("--version", action="version", version=f"hostkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="run the passes of a TOML run file")
    p.add_argument("run_file", type=Path)
    p.add_argument("--output-dir", help="override [output].dir")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan without loading a model")
    p.add_argument("--no-cache", action="store_true", help="run every step even if unchanged")
    p.add_argument("--verify", action="store_true",
                   help="before skipping an unchanged step, check its files' hashes (not only their sizes)")
    _add_common(p)

    p = sub.add_parser("validate", help="check a run file (everything short of loading a model)")
    p.add_argument("run_file", type=Path)
    _add_common(p)

    p = sub.add_parser("plugins", help="declared, installed, loaded and broken plugins")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--pip-args", action="store_true", help="print pip install arguments for the plugins declared in plugins.toml")
    p.add_argument("--editable", action="store_true", help="with --pip-args: editable installs of local plugins")
    _add_common(p)

    p = sub.add_parser("passes", help="pass types and their summaries")
    _add_common(p)

    p = sub.add_parser("schema", help="a pass's options (or data, output, HfModel, ...) as a commented TOML template")
    p.add_argument("pass_type", help="a pass type, or one of the run file's own tables: data, output, a model type")
    p.add_argument("--markdown", action="store_true", help="a Markdown option table instead")
    _add_common(p)

    p = sub.add_parser("new-plugin", help="scaffold a new plugin package from the template")
    p.add_argument("name", help="short name, e.g. 'prune' (distribution hostkit-prune, module hostkit_prune)")
    p.add_argument("--pass-type", help="pass type to provide (default: the name in CamelCase)")
    p.add_argument("--dest", type=Path, default=Path("."), help="folder to create the package in")

    for spec in sorted(host.registry.commands.values(), key=lambda s: s.name):
        # a plugin's command must never break --help or the other commands: configure a
        # throw-away parser first (configure is light by contract), add the command only then
        try:
            spec.configure(_Parser(prog=f"hostkit {spec.name}"))
        except Exception as exc:  # noqa: BLE001
            _command_broken(host, spec, exc)
            continue
        try:
            p = sub.add_parser(spec.name, help=f"{spec.help} [{spec.plugin.describe() if spec.plugin else ''}]")
        except Exception as exc:  # noqa: BLE001 - e.g. a name clash argparse refuses
            _command_broken(host, spec, exc)
            continue
        spec.configure(p)
        p.set_defaults(plugin_command=spec)
    return parser


def _command_broken(host: PluginHost, spec: Any, exc: BaseException) -> None:
    record = host.records.get(spec.plugin.name) if spec.plugin else None
    message = f"command {spec.name!r} cannot be set up: {type(exc).__name__}: {exc}"
    if record is not None:
        record.status = "broken"
        record.error = f"plugin {record.name!r} ({record.describe()}): {message}"
    print(f"warning: {record.error if record else message}", file=sys.stderr)


def _workspace(args: argparse.Namespace) -> Workspace:
    path = getattr(args, "plugins", None)
    return Workspace.load(Path(path) if path else None, required=bool(path))


def _pre_scan(argv: list[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins")
    pre.add_argument("--traceback", action="store_true")
    known, _ = pre.parse_known_args(argv)
    return known


def main(argv: list[str] | None = None, *, host: PluginHost | None = None, stream: Any = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stream = stream or sys.stderr
    pre = _pre_scan(argv)
    try:
        if host is None:
            host = PluginHost.discover(_workspace(pre))
            for notice in host.notices:
                print(f"warning: {notice}", file=sys.stderr)
        parser = build_parser(host)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_OK
        if getattr(args, "plugin_command", None) is not None:
            return int(args.plugin_command.run(args) or 0)
        handler = {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins, "passes": cmd_passes,
                   "schema": cmd_schema, "new-plugin": cmd_new_plugin}[args.command]
        return handler(args, host, stream)
    except KeyboardInterrupt as exc:
        print("interrupted; completed steps are kept", file=stream)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    except OSError as exc:  # e.g. the output disk filled up while a step folder was being finalised
        if pre.traceback:
            from hostkit.runner import format_bug

            print(format_bug(exc, limit=100), file=stream, end="")
        print(f"ERROR: {exc.strerror or exc}: {exc.filename or ''}; completed steps are kept".replace(": ;", ";"),
              file=stream)
        return EXIT_PASS_FAILED
    except HostkitError as exc:
        cause = getattr(exc, "cause", None)
        if pre.traceback and cause is not None:
            from hostkit.runner import format_bug

            print(format_bug(cause, limit=100), file=stream, end="")
        elif getattr(exc, "is_bug", False) and cause is not None:
            from hostkit.runner import format_bug

            print(format_bug(cause), file=stream, end="")
        print(f"ERROR: {exc}", file=stream)
        return exc.exit_code


def cmd_validate(args: argparse.Namespace, host: PluginHost, stream: Any) -> int:
    from hostkit.plan import plan_run

    config = plan_run(args.run_file, host)
    print(f"{args.run_file}: ok ({len(config.steps)} step{'s' * (len(config.steps) != 1)}: "
          f"{', '.join(s.type for s in config.steps)})", file=sys.stdout)
    return EXIT_OK


def _print_plan(config: Any, host: PluginHost) -> None:
    from hostkit import handles

    print(f"hostkit {__version__} | {host.plugin_header()}")
    print(f"run file: {config.source}")
    print(f"model: {json.dumps(handles.to_json(config.model))}")
    for name, data in config.data.items():
        print(f"data.{name}: {data.type} {data.path or ''}".rstrip())
    print(f"output: {config.output.dir}")
    for step in config.steps:
        plugin = step.spec.plugin.describe() if step.spec.plugin else "?"
        print(f"[{step.index + 1}/{len(config.steps)}] {step.type} -> {step.folder_name}/  ({plugin})")
        for key, value in step.options.items():
            print(f"      {key} = {json.dumps(value)}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``, a container stop): handled like Ctrl-C, exit 143."""


@contextlib.contextmanager
def terminate_like_ctrl_c():
    """Turn SIGTERM into :class:`Terminated` while a run runs, so every exit path (manifest status
    ``interrupted``, the output lock released) runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_run(args: argparse.Namespace, host: PluginHost, stream: Any) -> int:
    from hostkit.plan import plan_run

    config = plan_run(args.run_file, host, output_dir=args.output_dir)
    if args.dry_run:
        _print_plan(config, host)
        print("dry run: nothing loaded, nothing written")
        return EXIT_OK
    from hostkit.runner import Runner

    _quiet_libraries()
    with terminate_like_ctrl_c():
        Runner(host, config, stream=stream, use_cache=False if args.no_cache else None, verify=args.verify).run()
    return EXIT_OK


#: Library loggers whose start-up chatter is not the user's business during a run: torchao's
#: "Failed to load <optional CUDA kernel>.so" on CPU builds and torch's pytree deprecation notices
#: (both fire when transformers imports torchao). Errors still show.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def _quiet_libraries() -> None:
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def cmd_plugins(args: argparse.Namespace, host: PluginHost, stream: Any) -> int:
    if args.pip_args:
        print(" ".join(host.workspace.pip_args(editable=args.editable)))
        return EXIT_OK
    records = sorted(host.records.values(), key=lambda r: (r.status == "internal", r.name))
    if args.json:
        print(json.dumps([r.as_json() for r in records], indent=2))
        return EXIT_OK
    rows = [("name", "distribution", "version", "status", "provides")]
    for r in records:
        status = r.status + (" (declared)" if r.declared else "")
        rows.append((r.name, r.distribution or "-", r.version or "-", status, ", ".join(r.provides) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in records:
        if r.error:
            print(f"! {r.name}: {r.error}")
        for warning in (r.warning or "").splitlines():
            print(f"! {r.name}: {warning}")
    return EXIT_OK


def cmd_passes(args: argparse.Namespace, host: PluginHost, stream: Any) -> int:
    specs = sorted(host.registry.passes.values(), key=lambda s: s.name.casefold())
    if not specs:
        print("no pass types installed (see `hostkit plugins`)")
    width = max((len(s.name) for s in specs), default=0)
    for spec in specs:
        kind = " (exporter)" if spec.kind == "exporter" else ""
        plugin = spec.plugin.distribution if spec.plugin else "?"
        print(f"{spec.name.ljust(width)}  {spec.summary}{kind}  [{plugin}, {spec.requires.hardware}]")
        if spec.requires.notes:
            print(f"{' ' * width}  note: {spec.requires.notes}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, host: PluginHost, stream: Any) -> int:
    from hostkit.converter import did_you_mean
    from hostkit.schema import markdown_table, table_template, toml_template

    host_tables = _host_tables(host)
    data_types = _data_type_groups(host, args.pass_type)
    if data_types:
        print("\n".join(markdown_table(cls) if args.markdown else
                        table_template(cls, f"[data.NAME]\ntype = {json.dumps(names[0])}",
                                       f"data type {' | '.join(names)}: {summary} [{plugin}]")
                        for cls, names, summary, plugin in data_types), end="")
        return EXIT_OK
    if args.pass_type.casefold() in host_tables:
        cls, header, title = host_tables[args.pass_type.casefold()]
        print(markdown_table(cls) if args.markdown else table_template(cls, header, title), end="")
        return EXIT_OK
    spec = host.registry.find_pass(args.pass_type)
    if spec is None:
        problem = host.provider_problem(args.pass_type)
        if problem is not None:
            raise problem
        known = [s.name for s in host.registry.passes.values()]
        raise ConfigError(f"unknown pass type {args.pass_type!r}{did_you_mean(args.pass_type, known)} "
                          f"(installed: {', '.join(sorted(known)) or 'none'})")
    print(markdown_table(spec.config_cls) if args.markdown else toml_template(spec), end="")
    return EXIT_OK


def _data_type_groups(host: PluginHost, wanted: str) -> list[tuple[type, list[str], str, str]]:
    """For ``schema data`` (every data type) or ``schema TYPE``: (class, type names, summary, plugin) per class."""
    groups: dict[type, tuple[type, list[str], str, str]] = {}
    for spec in host.registry.data_types.values():
        if wanted.casefold() in ("data", spec.name.casefold()):
            plugin = spec.plugin.describe() if spec.plugin else "hostkit"
            groups.setdefault(spec.config_cls, (spec.config_cls, [], spec.summary, plugin))[1].append(spec.name)
    return list(groups.values())


def _host_tables(host: PluginHost) -> dict[str, tuple[type, str, str]]:
    """The run file's own tables, by the name ``hostkit schema`` takes: data, output, and each model type."""
    from hostkit.tables import OutputConfig

    tables = {"output": (OutputConfig, "[output]", "where step folders and manifest.json go")}
    for spec in host.registry.model_types.values():
        tables[spec.name.casefold()] = (spec.cls, f"[model]\ntype = {json.dumps(spec.name)}", f"{spec.name}: {spec.summary}")
    return tables


def cmd_new_plugin(args: argparse.Namespace, host: PluginHost, stream: Any) -> int:
    from hostkit.scaffold import scaffold

    path = scaffold(args.name, args.dest, pass_type=args.pass_type)
    print(f"created {path}; next: pip install -e {path} && pytest {path}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
