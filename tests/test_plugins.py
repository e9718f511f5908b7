"""Plugin discovery and loading: entry points, broken plugins, env switches, check_pending."""

from __future__ import annotations

import json
import types

from hostkit import PassSpec, hookimpl
from hostkit.plugins import PluginHost, PluginRecord
from hostkit.testing import register_plugin
from hostkit.workspace import Workspace

from host_helpers import make_fake_distribution, run_hostkit

BROKEN = """
raise ImportError("No module named 'definitely_missing_dependency'")
"""

TYPO = """
from hostkit import hookimpl

@hookimpl
def hostkit_run_passs(pass_type, config, model, context):
    return None
"""

OLD = """
import attrs
from hostkit import PassSpec, hookimpl

@attrs.frozen
class Cfg:
    pass

@hookimpl
def hostkit_register(register):
    register.pass_type(PassSpec(name="Old", config_cls=Cfg, summary="an old plugin", run="hostkit_old:run"))
"""


def test_installed_test_plugin_is_discovered_through_its_entry_point():
    host = PluginHost.discover(env={})
    record = host.records["echo"]
    assert record.status == "loaded"
    assert record.distribution == "hostkit-echo" and record.version == "0.3.0"
    assert record.provides == ["Echo"]
    assert host.registry.find_pass("ECHO").plugin.distribution == "hostkit-echo"


def test_load_plugins_env_switch():
    assert PluginHost.discover(env={"HOSTKIT_LOAD_PLUGINS": ""}).registry.find_pass("Echo") is None
    assert PluginHost.discover(env={"HOSTKIT_LOAD_PLUGINS": "echo"}).registry.find_pass("Echo") is not None
    host = PluginHost.discover(env={"HOSTKIT_DISABLE_PLUGINS": "echo,other"})
    assert host.registry.find_pass("Echo") is None and host.records["echo"].status == "disabled"


def test_disabled_in_plugins_toml_is_not_imported(tmp_path):
    (tmp_path / "plugins.toml").write_text("[plugins.echo]\nrequirement = 'hostkit-echo'\nenabled = false\n")
    host = PluginHost.discover(Workspace.load(tmp_path / "plugins.toml"), env={})
    assert host.records["echo"].status == "disabled"


def test_broken_plugin_is_listed_and_help_still_works(tmp_path):
    site = make_fake_distribution(tmp_path / "site", dist="hostkit-broken", version="1.2.3", module="hostkit_broken",
                                  entry_name="broken", source=BROKEN)
    listed = run_hostkit(["plugins", "--json"], cwd=tmp_path, site=site)
    assert listed.returncode == 0, listed.stderr
    record = {r["name"]: r for r in json.loads(listed.stdout)}["broken"]
    assert record["status"] == "broken"
    assert record["distribution"] == "hostkit-broken" and record["version"] == "1.2.3"
    assert "definitely_missing_dependency" in record["error"]
    assert run_hostkit(["--help"], cwd=tmp_path, site=site).returncode == 0
    table = run_hostkit(["plugins"], cwd=tmp_path, site=site)
    assert "broken" in table.stdout and "Error importing plugin 'broken'" in table.stdout


def test_run_that_needs_a_broken_plugin_exits_3_naming_its_distribution(tmp_path):
    site = make_fake_distribution(tmp_path / "site", dist="hostkit-broken", version="1.2.3", module="hostkit_broken",
                                  entry_name="broken", source=BROKEN)
    (tmp_path / "m").mkdir()
    (tmp_path / "run.toml").write_text('[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Broken"\n')
    result = run_hostkit(["run", "run.toml"], cwd=tmp_path, site=site)
    assert result.returncode == 3, result.stderr
    assert "hostkit-broken 1.2.3" in result.stderr and "definitely_missing_dependency" in result.stderr
    # a run that does not need it is unaffected
    (tmp_path / "ok.toml").write_text('[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Echo"\n[output]\ndir = "out"\n')
    assert run_hostkit(["run", "ok.toml"], cwd=tmp_path, site=site).returncode == 0


def test_typo_in_hookimpl_name_is_an_error_that_names_the_plugin(tmp_path):
    site = make_fake_distribution(tmp_path / "site", dist="hostkit-typo", version="0.1", module="hostkit_typo",
                                  entry_name="typo", source=TYPO)
    listed = run_hostkit(["plugins", "--json"], cwd=tmp_path, site=site)
    record = {r["name"]: r for r in json.loads(listed.stdout)}["typo"]
    assert record["status"] == "broken"
    assert "plugin 'typo'" in record["error"] and "hostkit_run_passs" in record["error"]


def test_host_version_mismatch_is_reported_not_crashed_on(tmp_path):
    site = make_fake_distribution(tmp_path / "site", dist="hostkit-old", version="0.0.1", module="hostkit_old",
                                  entry_name="old", source=OLD, requires=["hostkit-core<0.1"])
    listed = run_hostkit(["plugins", "--json"], cwd=tmp_path, site=site)
    record = {r["name"]: r for r in json.loads(listed.stdout)}["old"]
    assert record["status"] == "loaded"
    assert "declares hostkit-core<0.1" in record["warning"]


def test_registration_failure_marks_plugin_broken_and_forgets_its_contributions():
    host = PluginHost.isolated()

    class Half:
        @hookimpl
        def hostkit_register(self, register):
            register.pass_type(PassSpec(name="Half", config_cls=object, summary="x", run="half:run"))
            raise RuntimeError("boom")

    record = host.add_plugin(Half(), PluginRecord(name="half"))
    assert record.status == "broken" and "boom" in record.error
    assert host.registry.find_pass("Half") is None


def test_duplicate_pass_type_is_contested_by_both_plugins_not_won_by_one():
    # before: the second plugin was marked broken and the first in sort order silently won
    host = PluginHost.discover(env={})
    clone = types.SimpleNamespace()

    @hookimpl
    def hostkit_register(register):
        register.pass_type(PassSpec(name="echo", config_cls=object, summary="a clash", run="clone:run"))

    clone.hostkit_register = hostkit_register
    record = host.add_plugin(clone, PluginRecord(name="clone", distribution="hostkit-clone", version="2.0"))
    assert record.status == "loaded" and record.provides == ["echo"]
    assert host.registry.find_pass("Echo") is None
    assert [s.plugin.distribution for s in host.registry.contest("ECHO")] == ["hostkit-echo", "hostkit-clone"]
    for name in ("echo", "clone"):
        assert "'Echo' is registered by hostkit-echo 0.3.0 and hostkit-clone 2.0" in host.records[name].warning
    problem = str(host.provider_problem("echo"))
    assert "hostkit-echo 0.3.0 and hostkit-clone 2.0" in problem and "disable one" in problem
    # forgetting the clone (a failed registration is rolled back) gives Echo back to its plugin
    host.registry.remove_plugin("clone")
    assert host.registry.find_pass("Echo").plugin.distribution == "hostkit-echo" and not host.registry.contested


def test_pass_spec_run_must_name_an_entry():
    import pytest

    with pytest.raises(ValueError, match='run must be a callable or a "module:function" string'):
        PassSpec(name="X", config_cls=object, summary="x", run="no_colon")
    assert PassSpec(name="X", config_cls=object, summary="x", run="json:dumps").entry() is json.dumps
    assert PassSpec(name="X", config_cls=object, summary="x", run="os.path:join").entry().__name__ == "join"


def test_register_plugin_helper_raises_on_broken(plugin_host):
    class Bad:
        @hookimpl
        def hostkit_nonexistent(self):
            pass

    try:
        register_plugin(plugin_host, Bad(), "bad")
    except AssertionError as exc:
        assert "plugin 'bad'" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a broken plugin was accepted")


def test_declared_but_not_installed(tmp_path):
    (tmp_path / "plugins.toml").write_text("[plugins.ghost]\npath = 'peft_plugins/ghost'\nprovides = ['Ghost']\n")
    host = PluginHost.discover(Workspace.load(tmp_path / "plugins.toml"), env={})
    record = host.records["ghost"]
    assert record.status == "not installed" and record.declared
    assert "pip install" in record.error


CLASHING_COMMAND = """
from hostkit import CommandSpec, hookimpl

@hookimpl
def hostkit_register(register):
    register.command(CommandSpec(name="run", help="mine", configure=lambda p: None, run=lambda a: 0))
"""

BAD_CONFIGURE = """
from hostkit import CommandSpec, hookimpl

def configure(parser):
    raise ZeroDivisionError("configure failed")

@hookimpl
def hostkit_register(register):
    register.command(CommandSpec(name="oops", help="mine", configure=configure, run=lambda a: 0))
"""


def test_a_plugin_command_never_breaks_help(tmp_path):
    for name, source, error in (("clash", CLASHING_COMMAND, "one of hostkit's own commands"),
                                ("oops", BAD_CONFIGURE, "configure failed")):
        site = make_fake_distribution(tmp_path / f"site-{name}", dist=f"hostkit-{name}", version="0.1",
                                      module=f"hostkit_{name}", entry_name=name, source=source)
        assert run_hostkit(["--help"], cwd=tmp_path, site=site).returncode == 0
        listed = run_hostkit(["plugins", "--json"], cwd=tmp_path, site=site)
        record = {r["name"]: r for r in json.loads(listed.stdout)}[name]
        assert record["status"] == "broken" and error in record["error"]


def test_plugins_toml_errors_name_the_file(tmp_path):
    (tmp_path / "plugins.toml").write_text("[plugins.lora]\npath = 'x'\nenabeld = true\n")
    result = run_hostkit(["plugins"], cwd=tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'plugins.toml'}: plugins.lora.enabeld: unknown key (did you mean 'enabled'?)" in result.stderr


def test_a_disabled_provider_is_named_as_disabled(tmp_path):
    (tmp_path / "plugins.toml").write_text("[plugins.echo]\nrequirement = 'hostkit-echo'\nprovides = ['Echo']\nenabled = false\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "run.toml").write_text('[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Echo"\n')
    result = run_hostkit(["validate", "run.toml"], cwd=tmp_path)
    assert result.returncode == 2 and "plugin 'echo', which is disabled" in result.stderr
