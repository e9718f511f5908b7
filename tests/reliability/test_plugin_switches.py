"""Issue 12.10: HOSTKIT_LOAD_PLUGINS / HOSTKIT_DISABLE_PLUGINS say what they did, and a broken plugin is exit 3."""

from __future__ import annotations

import pytest

from host_helpers import make_fake_distribution
from reliability.support import TRACEBACK, cli, echo_run


def test_plugin_names_in_the_switches_match_like_pass_types(workdir):
    (workdir / "run.toml").write_text(echo_run())
    for env in ({"HOSTKIT_LOAD_PLUGINS": "Echo"}, {"HOSTKIT_LOAD_PLUGINS": " ECHO ,lora"}):
        code, output = cli(["validate", "run.toml"], workdir, env=env)
        assert code == 0, f"{env}: {output}"
    code, output = cli(["validate", "run.toml"], workdir, env={"HOSTKIT_DISABLE_PLUGINS": "ECHO"})
    assert code == 2 and "HOSTKIT_DISABLE_PLUGINS" in output, output


@pytest.mark.parametrize("variable", ["HOSTKIT_LOAD_PLUGINS", "HOSTKIT_DISABLE_PLUGINS"])
def test_unknown_names_in_the_switches_are_warned_about(workdir, variable):
    (workdir / "run.toml").write_text(echo_run())
    value = "echo,no_such_plugin" if variable == "HOSTKIT_LOAD_PLUGINS" else "no_such_plugin"
    code, output = cli(["validate", "run.toml"], workdir, env={variable: value})
    assert code == 0, output
    warnings = [line for line in output.splitlines() if "no_such_plugin" in line]
    assert len(warnings) == 1 and variable in warnings[0] and "warning" in warnings[0].lower(), output


def test_a_pass_switched_off_by_the_variable_names_the_variable(workdir):
    (workdir / "run.toml").write_text(echo_run())
    code, output = cli(["validate", "run.toml"], workdir, env={"HOSTKIT_LOAD_PLUGINS": "lora"})
    assert code == 2, output
    line = [line for line in output.splitlines() if "passes[0].type" in line]
    assert line and "HOSTKIT_LOAD_PLUGINS" in line[0] and "echo" in line[0], output


MISSPELT = """
import attrs
from hostkit import PassSpec, hookimpl, option

@attrs.frozen
class WidgetConfig:
    size: int = option(1, help="a size")

@hookimpl
def hostkit_register(register):
    register.pass_type(PassSpec(name="Widget", config_cls=WidgetConfig, summary="a widget", run="hostkit_gadgets:run"))

@hookimpl
def hostkit_run_passs(pass_type, config, model, context):  # misspelt
    return None
"""


def test_a_broken_plugin_whose_pass_name_differs_is_exit_3_naming_it(workdir):
    site = make_fake_distribution(workdir / "site", dist="hostkit-gadgets", version="0.2", module="hostkit_gadgets",
                                  entry_name="gadgets", source=MISSPELT)
    (workdir / "run.toml").write_text(echo_run(passes='[[passes]]\ntype = "Widget"\n'))
    from host_helpers import run_hostkit

    done = run_hostkit(["validate", "run.toml"], cwd=workdir, site=site)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert TRACEBACK not in output
    assert "gadgets" in output and "hostkit-gadgets 0.2" in output and "hostkit_run_passs" in output, output
