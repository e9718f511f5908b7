"""Shared bits of the host tests: fake distributions on a private sys.path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def make_fake_distribution(site: Path, *, dist: str, version: str, module: str, entry_name: str,
                           source: str, requires: list[str] = ()) -> Path:
    """Write a module and a ``.dist-info`` with a ``hostkit.plugins`` entry point into ``site``.

    importlib.metadata discovers it like any installed distribution when ``site``
    is on ``sys.path`` (we run the host in a subprocess with PYTHONPATH=site).
    """
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    meta = [f"Metadata-Version: 2.1", f"Name: {dist}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    (info / "entry_points.txt").write_text(f"[hostkit.plugins]\n{entry_name} = {module}\n")
    return site


def run_hostkit(args: list[str], *, cwd: Path, site: Path | None = None, env: dict | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("HOSTKIT_LOAD_PLUGINS", None)
    if site is not None:
        full_env["PYTHONPATH"] = str(site) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "hostkit", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
