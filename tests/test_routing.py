"""Who runs a pass: only the plugin that registered its type, and a type registered twice is an error.

Two holes of the old dispatch (every plugin's ``hostkit_run_pass`` asked in turn, the
first name in sort order winning a duplicate registration), each reproduced with a real
installed distribution next to the real hostkit-echo plugin.
"""

from __future__ import annotations

import json

from host_helpers import make_fake_distribution, run_hostkit

# a plugin that answers every pass with its input, as a careless `hostkit_run_pass` would
GREEDY = """
from pathlib import Path
from hostkit import hookimpl

@hookimpl
def hostkit_run_pass(pass_type, config, model, context):
    Path(context.output_dir, "greedy-ran.txt").write_text(pass_type)
    return model
"""

# a second plugin that registers Echo (and a pass of its own)
CLONE = """
import attrs
from hostkit import PassSpec, hookimpl, option

@attrs.frozen
class CloneConfig:
    message: str = option("clone", help="text")

def run(config, model, context):
    (context.output_dir / "clone.txt").write_text(config.message)
    return model

@hookimpl
def hostkit_register(register):
    register.pass_type(PassSpec(name="Echo", config_cls=CloneConfig, summary="a clash", run=run))
    register.pass_type(PassSpec(name="CloneOnly", config_cls=CloneConfig, summary="its own pass", run=run))
"""

RUN = '[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "{type}"\n[output]\ndir = "out"\n'


def test_only_the_plugin_that_registered_a_pass_type_runs_it(tmp_path):
    site = make_fake_distribution(tmp_path / "site", dist="hostkit-greedy", version="0.1", module="hostkit_greedy",
                                  entry_name="greedy", source=GREEDY)
    (tmp_path / "m").mkdir()
    (tmp_path / "run.toml").write_text(RUN.format(type="Echo"))
    done = run_hostkit(["run", "run.toml"], cwd=tmp_path, site=site)
    assert done.returncode == 0, done.stderr
    step = tmp_path / "out" / "01-echo"
    assert (step / "echo.txt").read_text() == "hello\n"  # hostkit-echo's own work
    assert not (step / "greedy-ran.txt").exists()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["steps"][0]["plugin"]["distribution"] == "hostkit-echo"
    # the plugin with a plain hostkit_run_pass is told how to do it instead
    records = {r["name"]: r for r in json.loads(run_hostkit(["plugins", "--json"], cwd=tmp_path, site=site).stdout)}
    assert records["greedy"]["status"] == "broken"
    assert "hostkit_run_pass" in records["greedy"]["error"] and "PassSpec(run=" in records["greedy"]["error"]


def test_a_pass_type_registered_by_two_plugins_is_an_error_naming_both(tmp_path):
    site = make_fake_distribution(tmp_path / "site", dist="hostkit-clone", version="1.0", module="hostkit_clone",
                                  entry_name="clone", source=CLONE)
    (tmp_path / "m").mkdir()
    (tmp_path / "run.toml").write_text(RUN.format(type="Echo"))
    done = run_hostkit(["run", "run.toml"], cwd=tmp_path, site=site)
    assert done.returncode == 3, done.stderr
    line = [line for line in done.stderr.splitlines() if "passes[0] (Echo)" in line]
    assert line and "hostkit-echo 0.3.0" in line[0] and "hostkit-clone 1.0" in line[0], done.stderr
    assert not (tmp_path / "out" / "01-echo").exists()
    # a run that does not need the contested type is unaffected
    (tmp_path / "own.toml").write_text(RUN.format(type="CloneOnly"))
    assert run_hostkit(["run", "own.toml"], cwd=tmp_path, site=site).returncode == 0
    # `hostkit plugins` keeps both loaded and warns, naming both distributions
    table = run_hostkit(["plugins"], cwd=tmp_path, site=site)
    assert table.returncode == 0, table.stderr
    warnings = [line for line in table.stdout.splitlines() if line.startswith("!") and "'Echo'" in line]
    assert warnings and all("hostkit-echo 0.3.0" in w and "hostkit-clone 1.0" in w for w in warnings), table.stdout
    records = {r["name"]: r for r in json.loads(run_hostkit(["plugins", "--json"], cwd=tmp_path, site=site).stdout)}
    assert records["echo"]["status"] == records["clone"]["status"] == "loaded"
