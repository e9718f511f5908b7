"""The step cache while a plugin is developed: a plugin installed from a local folder (pip's direct_url.json)
is keyed by its source files too, so editing its work.py re-runs the step; one installed from a wheel is
keyed by its version. Each run is a real ``hostkit run`` process, as a plugin author runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostkit.devcode import local_install, source_fingerprint

PLUGIN = '''
import attrs

from hostkit import PassSpec, hookimpl, option


@attrs.frozen
class StampConfig:
    file_name: str = option("stamp.txt", help="file to write")


@hookimpl
def hostkit_register(register):
    register.pass_type(PassSpec(name="Stamp", config_cls=StampConfig, summary="write the work module's STAMP",
                                run="hostkit_devplug.work:run"))
'''

WORK = '''
STAMP = "{stamp}"


def run(config, model, context):
    (context.output_dir / config.file_name).write_text(STAMP)
    return model
'''

RUN = """
[model]
type = "HfModel"
path = "m"

[[passes]]
type = "Stamp"

[output]
dir = "out"
"""


def _install(site: Path, *, editable: bool | None) -> Path:
    """hostkit-devplug on ``site``: editable (True), from a local folder (False) or from a wheel (None)."""
    package = site / "hostkit_devplug"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(PLUGIN)
    (package / "work.py").write_text(WORK.format(stamp="v1"))
    info = site / "hostkit_devplug-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostkit-devplug\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[hostkit.plugins]\ndevplug = hostkit_devplug.plugin\n")
    if editable is not None:
        url = {"url": f"file://{site}", "dir_info": {"editable": True} if editable else {}}
        (info / "direct_url.json").write_text(json.dumps(url))
    return package


def _hostkit(work: Path, site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTKIT_")}
    env.update(PYTHONPATH=str(site), HOSTKIT_LOAD_PLUGINS="devplug")
    return subprocess.run([sys.executable, "-m", "hostkit", "run", "run.toml", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)


def _edit(work_py: Path, stamp: str) -> None:
    before = work_py.stat().st_mtime_ns
    work_py.write_text(WORK.format(stamp=stamp))
    if work_py.stat().st_mtime_ns == before:  # a coarse clock: make the edit visible as a real editor's would be
        os.utime(work_py, ns=(before + 1_000_000_000, before + 1_000_000_000))


@pytest.fixture
def work(tmp_path):
    (tmp_path / "work" / "m").mkdir(parents=True)
    (tmp_path / "work" / "m" / "config.json").write_text("{}")
    (tmp_path / "work" / "run.toml").write_text(RUN)
    return tmp_path / "work"


def test_editing_an_editable_plugin_reruns_its_step(work, tmp_path):
    site = tmp_path / "site"
    package = _install(site, editable=True)
    first = _hostkit(work, site)
    assert first.returncode == 0, first.stderr
    assert (work / "out" / "01-stamp" / "stamp.txt").read_text() == "v1"
    code = json.loads((work / "out" / "manifest.json").read_text())["steps"][0]["plugin_code"]
    assert code.startswith("sha256:")

    # before the edit: unchanged, and the skip line says what was compared
    again = _hostkit(work, site)
    assert again.returncode == 0, again.stderr
    assert ("[1/1] Stamp ... unchanged, skipped (cached in 01-stamp/: same options, input and plugin code; "
            "--no-cache runs it again)") in again.stderr

    # after the edit: the step runs again, saying why, and writes what the new code writes
    _edit(package / "work.py", "v2 edited")
    edited = _hostkit(work, site)
    assert edited.returncode == 0, edited.stderr
    assert ("[1/1] Stamp: the code of hostkit-devplug (installed from a local folder) changed since the last run: "
            "running it again") in edited.stderr
    assert "[1/1] Stamp ... done in" in edited.stderr
    assert (work / "out" / "01-stamp" / "stamp.txt").read_text() == "v2 edited"
    step = json.loads((work / "out" / "manifest.json").read_text())["steps"][0]
    assert step["status"] == "ok" and step["plugin_code"] != code


def test_a_wheel_installed_plugin_is_keyed_by_its_version(work, tmp_path):
    site = tmp_path / "site"
    package = _install(site, editable=None)
    assert _hostkit(work, site).returncode == 0
    _edit(package / "work.py", "v2 edited")
    again = _hostkit(work, site)
    assert again.returncode == 0, again.stderr
    assert ("unchanged, skipped (cached in 01-stamp/: same options, input and plugin version 0.1.0; "
            "--no-cache runs it again)") in again.stderr
    assert (work / "out" / "01-stamp" / "stamp.txt").read_text() == "v1"
    assert json.loads((work / "out" / "manifest.json").read_text())["steps"][0]["plugin_code"] is None
    forced = _hostkit(work, site, "--no-cache")
    assert forced.returncode == 0 and "[1/1] Stamp ... done in" in forced.stderr
    assert (work / "out" / "01-stamp" / "stamp.txt").read_text() == "v2 edited"


def test_source_fingerprint_follows_the_files(tmp_path, monkeypatch):
    site = tmp_path / "site"
    package = _install(site, editable=False)  # pip install ./folder: a local, non-editable install
    monkeypatch.syspath_prepend(str(site))
    assert local_install("hostkit-devplug") == {"url": f"file://{site}", "dir_info": {}}
    first = source_fingerprint("hostkit-devplug")
    assert first == source_fingerprint("hostkit-devplug") and first.startswith("sha256:")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.py").write_text("not a source file")
    assert source_fingerprint("hostkit-devplug") == first
    time.sleep(0.01)
    _edit(package / "work.py", "v2")
    assert source_fingerprint("hostkit-devplug") != first
    assert source_fingerprint("no-such-distribution") is None and source_fingerprint(None) is None
