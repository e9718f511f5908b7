"""Run a TOML string end to end, in-process, and look at what came out."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class RunResult:
    """Exit code, everything printed, and the manifest (if one was written)."""

    exit_code: int
    output: str
    output_dir: Path | None
    run_file: Path

    @property
    def manifest(self) -> dict[str, Any] | None:
        if self.output_dir is None:
            return None
        path = self.output_dir / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def step(self, index: int) -> dict[str, Any]:
        assert self.manifest is not None, self.output
        return self.manifest["steps"][index]

    def final_model(self) -> Any:
        """The output handle of the last step, as a handle object."""
        from hostkit import handles

        assert self.manifest is not None, self.output
        return handles.from_json(self.manifest["steps"][-1]["output"])


def run_toml(toml_text: str, workdir: Path, *, host: Any = None, command: str = "run",
             extra_args: tuple[str, ...] = (), file_name: str = "run.toml") -> RunResult:
    """Write ``toml_text`` to ``workdir/file_name`` and run ``hostkit <command>`` on it.

    ``host`` defaults to a fully discovered :class:`hostkit.PluginHost`; pass
    an isolated host with your plugin registered to test it alone.
    """
    from hostkit.cli import main
    from hostkit.tables import read_toml

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_file = workdir / file_name
    run_file.write_text(toml_text)
    stream = io.StringIO()
    import contextlib

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([command, str(run_file), *extra_args], host=host, stream=stream)
    output_dir = None
    try:
        raw = read_toml(run_file)
        out = raw.get("output", {}).get("dir", "runs/default")
        if "--output-dir" in extra_args:
            out = extra_args[extra_args.index("--output-dir") + 1]
        output_dir = (workdir / out).resolve()
    except Exception:  # noqa: BLE001 - an invalid file is what some tests want
        pass
    return RunResult(exit_code=code, output=stdout.getvalue() + stream.getvalue(), output_dir=output_dir, run_file=run_file)
