"""Issue 12.1 and 12.10 (SIGTERM): a run owns its output folder, and every way it ends leaves a true manifest."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from reliability.support import cli, echo_run, kill_group, start_hostkit, wait_for

SLOW_ECHO = echo_run(passes='[[passes]]\ntype = "Echo"\nmessage = "first"\nrepeat = 8\nsleep_s = 0.25\n')


def _step_started(out):
    return lambda: out.is_dir() and any(p.name.endswith(".partial") for p in out.iterdir())


def test_a_second_run_into_a_busy_output_dir_is_refused_naming_the_dir_and_the_holder(workdir):
    (workdir / "run.toml").write_text(SLOW_ECHO)
    out = workdir / "out"
    first = start_hostkit(["run", "run.toml"], workdir)
    try:
        wait_for(_step_started(out), first, what="the first run's step folder")
        code, output = cli(["run", "run.toml"], workdir)
        assert code == 2, output
        error = [line for line in output.splitlines() if line.startswith("ERROR")]
        assert len(error) == 1, output
        assert str(out) in error[0] and str(first.pid) in error[0] and socket.gethostname() in error[0], output
        assert first.wait(timeout=120) == 0, first.stdout.read()
    finally:
        kill_group(first)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and [s["status"] for s in manifest["steps"]] == ["ok"]
    assert (out / "01-echo" / "echo.txt").read_text() == "first\n" * 8
    assert sorted(p.name for p in out.iterdir()) == ["01-echo", "manifest.json"]


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_message(workdir):
    (workdir / "run.toml").write_text(SLOW_ECHO)
    out = workdir / "out"
    first = start_hostkit(["run", "run.toml"], workdir)
    wait_for(_step_started(out), first, what="the first run's step folder")
    kill_group(first)  # kill -9: no exit path runs, the lock stays behind
    code, output = cli(["run", "run.toml"], workdir)
    assert code == 0, output
    stale = [line for line in output.splitlines() if "stale" in line.lower()]
    assert stale and str(first.pid) in stale[0], output
    assert json.loads((out / "manifest.json").read_text())["status"] == "ok"
    assert (out / "01-echo" / "echo.txt").read_text() == "first\n" * 8


def test_the_lock_is_released_on_every_exit_path(workdir):
    """Success, a failed pass and a config error all let the next run in at once, without a 'stale' message."""
    for passes, expected in (('[[passes]]\ntype = "Echo"\n', 0),
                             ('[[passes]]\ntype = "Echo"\nfail = "expected"\n', 1),
                             ('[[passes]]\ntype = "Echo"\nfail = "bug"\n', 1)):
        (workdir / "run.toml").write_text(echo_run(passes=passes))
        code, output = cli(["run", "run.toml"], workdir)
        said = output.replace(str(workdir), "<workdir>").lower()
        assert code == expected, output
        assert "stale" not in said and "lock" not in said, output
    (workdir / "run.toml").write_text(echo_run())
    code, output = cli(["run", "run.toml"], workdir)
    assert code == 0 and "lock" not in output.replace(str(workdir), "<workdir>").lower(), output


def test_sigterm_is_treated_like_ctrl_c(workdir):
    passes = ('[[passes]]\ntype = "Echo"\nmessage = "quick"\n'
              '[[passes]]\ntype = "Echo"\nmessage = "slow"\nrepeat = 40\nsleep_s = 0.25\n')
    (workdir / "run.toml").write_text(echo_run(passes=passes))
    out = workdir / "out"
    proc = start_hostkit(["run", "run.toml"], workdir)
    try:
        wait_for(lambda: (out / "01-echo").is_dir() and (out / "manifest.json").is_file()
                 and (out / ".02-echo.partial").is_dir(), proc, what="the second step")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        output = proc.stdout.read()
    finally:
        kill_group(proc)
    assert code in (130, 143), output
    assert "completed steps are kept" in output, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted", manifest
    assert [s["status"] for s in manifest["steps"]] == ["ok", "interrupted"]
    assert (out / "01-echo" / "echo.txt").read_text() == "quick\n"
    # the lock went with it (no stale-lock takeover), and the next run keeps the finished step
    (workdir / "run.toml").write_text(echo_run(passes=passes.replace("repeat = 40", "repeat = 1")))
    code, output = cli(["run", "run.toml"], workdir)
    assert code == 0 and "stale" not in output, output
    assert "unchanged, skipped" in output and json.loads((out / "manifest.json").read_text())["status"] == "ok"
