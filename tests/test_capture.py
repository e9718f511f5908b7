"""Library warnings and log lines are captured around every pass (hostkit.builtin.measure).

Each distinct message lands in the step's ``notes.library_warnings`` with its count; the
terminal shows nothing for deprecations and log chatter, one short line when a message
matters (a RuntimeWarning, an ERROR log), and the user's own warnings unchanged.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import attrs
import pytest

from hostkit import PassSpec, hookimpl, option
from hostkit.testing import register_plugin


@attrs.frozen
class _Opts:
    numeric: bool = option(False, help="also raise a RuntimeWarning")
    user_script: str | None = option(None, help="a script in the run folder that warns", path=True)


def noisy(config, model, context):
    for _ in range(3):
        warnings.warn("`old_thing` is deprecated and will be removed in v6.", FutureWarning)
    logging.getLogger("somelib.backends.cpu").warning("Failed to load an optional kernel: %s", "No module named 'k'")
    logging.getLogger("ownhandler").warning("a library with its own handler")
    logging.getLogger("hostkit_noisy").info("a plugin's own log line is left alone")
    if config.numeric:
        warnings.warn("overflow encountered in exp", RuntimeWarning)
    if config.user_script:
        import runpy

        runpy.run_path(config.user_script)
    return model


class Noisy:
    @hookimpl
    def hostkit_register(self, register):
        register.pass_type(PassSpec(name="Noisy", config_cls=_Opts, summary="warns", run=noisy))


RUN = '[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Noisy"\n{extra}\n[[passes]]\ntype = "Noisy"\n[output]\ndir = "out"\n'


@pytest.fixture
def own_handler_logger():
    logger = logging.getLogger("ownhandler")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    yield logger
    logger.removeHandler(handler)


def test_library_messages_are_counted_in_the_manifest_not_printed(plugin_host, run_toml, tmp_path, capfd,
                                                                   own_handler_logger):
    (tmp_path / "m").mkdir()
    register_plugin(plugin_host, Noisy(), "noisy")
    result = run_toml(RUN.format(extra=""), host=plugin_host)
    assert result.exit_code == 0, result.output
    expected = {
        "FutureWarning: `old_thing` is deprecated and will be removed in v6.": 3,
        "log ownhandler WARNING: a library with its own handler": 1,
        "log somelib.backends.cpu WARNING: Failed to load an optional kernel: No module named 'k'": 1,
    }
    for index in (0, 1):  # every pass, each with its own counts
        assert result.step(index)["notes"]["library_warnings"] == expected
        assert result.step(index)["duration_s"] >= 0 and result.step(index)["peak_rss_mb"] > 0
    printed = result.output + "".join(capfd.readouterr())
    assert "deprecated" not in printed and "optional kernel" not in printed and "own handler" not in printed
    assert "note:" not in printed  # nothing here matters to the user


def test_a_message_that_matters_gets_one_short_line(plugin_host, run_toml, tmp_path):
    (tmp_path / "m").mkdir()
    register_plugin(plugin_host, Noisy(), "noisy")
    result = run_toml(RUN.format(extra="numeric = true"), host=plugin_host)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "note:" in line]
    assert notes == ["    note: RuntimeWarning: overflow encountered in exp; all 6 library messages in "
                     "manifest.json, steps[0].notes.library_warnings"], result.output
    assert result.step(0)["notes"]["library_warnings"]["RuntimeWarning: overflow encountered in exp"] == 1


def test_the_users_own_warnings_are_shown_unchanged(plugin_host, run_toml, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "mine.py").write_text('import warnings\nwarnings.warn("my own script warns", UserWarning)\n')
    register_plugin(plugin_host, Noisy(), "noisy")
    with pytest.warns(UserWarning, match="my own script warns"):
        result = run_toml(RUN.format(extra='user_script = "mine.py"'), host=plugin_host)
    assert result.exit_code == 0, result.output
    assert not any("my own" in m for m in result.step(0)["notes"]["library_warnings"])


def test_logging_is_restored_after_a_pass(plugin_host, run_toml, tmp_path, own_handler_logger):
    root_handlers = list(logging.getLogger().handlers)
    own_handlers = list(own_handler_logger.handlers)
    (tmp_path / "m").mkdir()
    register_plugin(plugin_host, Noisy(), "noisy")
    assert run_toml(RUN.format(extra=""), host=plugin_host).exit_code == 0
    assert logging.getLogger().handlers == root_handlers and own_handler_logger.handlers == own_handlers
    assert own_handler_logger.propagate
