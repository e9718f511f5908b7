"""The runner end to end with the installed test plugin (hostkit-echo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from host_helpers import run_hostkit

RUN = """
[model]
type = "HfModel"
path = "m"

[[passes]]
type = "echo"
message = "hi"
repeat = 3

[[passes]]
type = "Echo"
mode = "upper"

[output]
dir = "out"
"""


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    return tmp_path


def test_steps_run_in_order_into_numbered_folders_with_a_manifest(run_toml, workdir):
    result = run_toml(RUN, workdir=workdir)
    assert result.exit_code == 0, result.output
    assert "plugins: " in result.output and "echo-0.3.0" in result.output
    assert "[1/2] Echo ... done in" in result.output and "[2/2] Echo ... done in" in result.output
    out = workdir / "out"
    assert sorted(p.name for p in out.iterdir()) == ["01-echo", "02-echo", "manifest.json"]
    assert (out / "01-echo" / "echo.txt").read_text() == "hi\n" * 3
    assert (out / "02-echo" / "echo.txt").read_text() == "HELLO\n"
    manifest = result.manifest
    assert manifest["status"] == "ok" and manifest["hostkit_version"]
    first, second = manifest["steps"]
    assert first["plugin"] == {"name": "echo", "distribution": "hostkit-echo", "version": "0.3.0"}
    assert first["metrics"]["echo_loss"] == [[1, 1.0], [2, 0.5], [3, pytest.approx(1 / 3)]]
    assert first["metrics"]["lines"] == 3
    assert first["content_hash"].startswith("sha256:") and first["duration_s"] >= 0
    assert first["peak_rss_mb"] > 0
    # the second step got the first step's output handle, relocated to the final folder
    assert first["output"]["adapter_path"] == str(out / "01-echo")
    assert second["input"] == first["output"]
    assert manifest["config"]["passes"][1] == {"type": "Echo", "mode": "upper"}
    assert manifest["plugins"]["echo"]["version"] == "0.3.0"


def test_rerun_skips_unchanged_steps_and_reruns_changed_ones(run_toml, workdir):
    assert run_toml(RUN, workdir=workdir).exit_code == 0
    again = run_toml(RUN, workdir=workdir)
    assert again.exit_code == 0
    assert again.output.count("unchanged, skipped") == 2
    assert [s["status"] for s in again.manifest["steps"]] == ["cached", "cached"]
    changed = run_toml(RUN.replace('mode = "upper"', 'mode = "plain"'), workdir=workdir)
    assert [s["status"] for s in changed.manifest["steps"]] == ["cached", "ok"]
    assert (workdir / "out" / "02-echo" / "echo.txt").read_text() == "hello\n"
    # a changed input file invalidates every step
    time.sleep(0.01)
    (workdir / "m" / "config.json").write_text('{"changed": true}')
    third = run_toml(RUN, workdir=workdir)
    assert [s["status"] for s in third.manifest["steps"]] == ["ok", "ok"]
    assert [s["status"] for s in run_toml(RUN, workdir=workdir, extra_args=("--no-cache",)).manifest["steps"]] == ["ok", "ok"]


def test_many_mistakes_are_reported_at_once_and_nothing_is_written(run_toml, workdir):
    bad = """
[model]
type = "HfModel"
path = "m"
taks = "text-generation"

[data.train]
type = "jsonl"
path = "missing.jsonl"
max_seq_len = "512"

[[passes]]
type = "Echo"
repeat = 0
mesage = "x"
scale = "big"

[[passes]]
type = "LoRAA"

[outptu]
dir = "out"
"""
    result = run_toml(bad, workdir=workdir, command="run")
    assert result.exit_code == 2
    for expected in (
        "outptu: unknown table (did you mean 'output'?)",
        "model.taks: unknown key (did you mean 'task'?)",
        "data.train.max_seq_len: expected an integer, got string '512'",
        "passes[0] (Echo).repeat: must be > 0, got 0",
        "passes[0] (Echo).mesage: unknown key (did you mean 'message'?)",
        "passes[0] (Echo).scale: expected a number, got string 'big'",
        "passes[1].type: unknown pass type 'LoRAA'",
        f"data.train.path: {workdir / 'missing.jsonl'} does not exist",
    ):
        assert expected in result.output, result.output
    assert "8 problems" in result.output
    assert not (workdir / "out").exists() and not (workdir / "runs").exists()


def test_missing_files_and_dangling_data_references(run_toml, workdir):
    result = run_toml("""
[model]
type = "HfModel"
path = "./nope"
[data.train]
type = "jsonl"
path = "missing.jsonl"
[[passes]]
type = "Echo"
""", workdir=workdir, command="validate")
    assert result.exit_code == 2
    assert f"model.path: {workdir / 'nope'} does not exist" in result.output
    assert f"data.train.path: {workdir / 'missing.jsonl'} does not exist" in result.output


def test_unknown_pass_type_names_the_declared_plugin_to_install(run_toml, workdir):
    (workdir / "plugins.toml").write_text('[plugins.ghost]\npath = "ghost"\nprovides = ["Ghost"]\n')
    from hostkit.plugins import PluginHost
    from hostkit.workspace import Workspace

    host = PluginHost.discover(Workspace.load(workdir / "plugins.toml"), env={})
    result = run_toml('[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "ghost"\n', workdir=workdir,
                      host=host, command="validate")
    assert result.exit_code == 2
    assert "unknown pass type 'ghost'; it is provided by plugin 'ghost', declared but not installed: pip install" in result.output
    assert "(installed: " in result.output and "Echo" in result.output.split("(installed: ")[1]


def test_plugins_toml_defaults_apply_under_run_file_values(run_toml, workdir):
    (workdir / "plugins.toml").write_text(
        '[plugins.echo]\nrequirement = "hostkit-echo"\n[plugins.echo.defaults.Echo]\nmessage = "from defaults"\nrepeat = 2\n')
    from hostkit.plugins import PluginHost
    from hostkit.workspace import Workspace

    host = PluginHost.discover(Workspace.load(workdir / "plugins.toml"), env={})
    result = run_toml('[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Echo"\nrepeat = 1\n[output]\ndir = "out"\n',
                      workdir=workdir, host=host)
    assert result.exit_code == 0, result.output
    assert (workdir / "out" / "01-echo" / "echo.txt").read_text() == "from defaults\n"
    assert result.manifest["config"]["passes"][0] == {"type": "Echo", "message": "from defaults", "repeat": 1}


def test_dry_run_prints_the_plan_and_writes_nothing(run_toml, workdir):
    result = run_toml(RUN, workdir=workdir, extra_args=("--dry-run",))
    assert result.exit_code == 0
    assert "[1/2] Echo -> 01-echo/  (hostkit-echo 0.3.0)" in result.output
    assert 'message = "hi"' in result.output and "dry run" in result.output
    assert not (workdir / "out").exists()


def test_expected_failure_is_one_line_and_keeps_earlier_steps(run_toml, workdir):
    text = RUN.replace('mode = "upper"', 'fail = "expected"')
    result = run_toml(text, workdir=workdir)
    assert result.exit_code == 1
    line = "ERROR: passes[1] (Echo) (plugin hostkit-echo 0.3.0): asked to fail (fail = 'expected')"
    assert line in result.output and "Traceback" not in result.output
    out = workdir / "out"
    assert (out / "01-echo" / "echo.txt").exists() and not (out / "02-echo").exists()
    assert result.manifest["status"] == "failed"
    assert [s["status"] for s in result.manifest["steps"]] == ["ok", "failed"]
    # the completed step is reused when the fixed file runs again
    fixed = run_toml(RUN, workdir=workdir)
    assert [s["status"] for s in fixed.manifest["steps"]] == ["cached", "ok"]


def test_bug_in_a_plugin_prints_a_short_traceback(run_toml, workdir):
    result = run_toml(RUN.replace('mode = "upper"', 'fail = "bug"'), workdir=workdir)
    assert result.exit_code == 1
    assert "Traceback" in result.output and "RuntimeError: a bug on purpose" in result.output
    assert "passes[1] (Echo) (plugin hostkit-echo 0.3.0): bug in the plugin" in result.output


def test_unwritable_output_dir_is_a_clear_error(run_toml, workdir):
    # (an output.dir that is itself a file is refused by validate: tests/reliability/test_validation.py)
    (workdir / "blocker").write_text("a file where a folder of the output path should be")
    result = run_toml(RUN.replace('dir = "out"', 'dir = "blocker/out"'), workdir=workdir)
    assert result.exit_code == 1
    assert f"output.dir: cannot write to {workdir / 'blocker' / 'out'}" in result.output
    assert (workdir / "blocker").read_text().startswith("a file")


def test_ctrl_c_stops_cleanly_and_keeps_completed_steps(workdir):
    text = RUN.replace('mode = "upper"', "sleep_s = 30.0")
    (workdir / "run.toml").write_text(text)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "hostkit", "run", "run.toml"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (workdir / "out" / "01-echo").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted; completed steps are kept" in output
    out = workdir / "out"
    assert (out / "01-echo" / "echo.txt").exists() and not (out / "02-echo").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert [s["status"] for s in manifest["steps"]] == ["ok", "interrupted"]


def test_only_rank_zero_writes_under_torchrun(workdir):
    (workdir / "run.toml").write_text(RUN)
    env = dict(os.environ, WORLD_SIZE="2")
    rank1 = subprocess.Popen([sys.executable, "-m", "hostkit", "run", "run.toml"], cwd=workdir,
                             env=dict(env, RANK="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rank0 = run_hostkit(["run", "run.toml"], cwd=workdir, env={"RANK": "0", "WORLD_SIZE": "2"})
    _, errors1 = rank1.communicate(timeout=120)
    assert rank0.returncode == 0 and rank1.returncode == 0, rank0.stderr + errors1
    assert "[1/2]" not in errors1 and "[1/2] Echo ... done" in rank0.stderr  # progress is rank 0's job
    out = workdir / "out"
    assert sorted(p.name for p in out.iterdir()) == ["01-echo", "02-echo", "manifest.json"]


def test_relative_paths_resolve_against_the_run_file(workdir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("cwd")
    (workdir / "run.toml").write_text(RUN)
    result = run_hostkit(["run", str(workdir / "run.toml")], cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert (workdir / "out" / "manifest.json").exists()
    override = run_hostkit(["run", str(workdir / "run.toml"), "--output-dir", "here"], cwd=elsewhere)
    assert override.returncode == 0 and (elsewhere / "here" / "01-echo").is_dir()


def test_named_steps_and_inputs_branch_the_pipeline(run_toml, workdir):
    text = """
[model]
type = "HfModel"
path = "m"

[[passes]]
name = "first"
type = "Echo"
message = "one"

[[passes]]
name = "second"
type = "Echo"
input = "model"
message = "two"

[[passes]]
type = "Echo"
input = "first"
message = "three"

[output]
dir = "out"
"""
    result = run_toml(text, workdir=workdir)
    assert result.exit_code == 0, result.output
    out = workdir / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["01-first", "02-second", "03-echo"]
    steps = result.manifest["steps"]
    assert steps[1]["input"]["adapter_path"] is None  # from the model, not from step 1
    assert steps[2]["input"] == steps[0]["output"]
    bad = run_toml(text.replace('input = "first"', 'input = "frist"'), workdir=workdir, command="validate")
    assert bad.exit_code == 2
    assert "passes[2] (Echo).input: expected \"model\" or the name of an earlier step (model, first, second), got 'frist' (did you mean 'first'?)" in bad.output


def test_a_changed_data_file_or_data_config_reruns_the_step(run_toml, workdir):
    (workdir / "train.jsonl").write_text('{"text": "a"}\n')
    text = RUN.replace('repeat = 3', 'repeat = 3\ntrain_data_config = "train"') + \
        '\n[data.train]\ntype = "jsonl"\npath = "train.jsonl"\ntext_field = "text"\n'
    assert run_toml(text, workdir=workdir).exit_code == 0
    assert (workdir / "out" / "01-echo" / "lines.txt").read_text() == "1"
    assert [s["status"] for s in run_toml(text, workdir=workdir).manifest["steps"]] == ["cached", "cached"]
    time.sleep(0.01)
    (workdir / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    rerun = run_toml(text, workdir=workdir)
    assert [s["status"] for s in rerun.manifest["steps"]][0] == "ok"
    assert (workdir / "out" / "01-echo" / "lines.txt").read_text() == "2"
    changed = run_toml(text.replace('text_field = "text"', 'text_field = "text"\nmax_samples = 1'), workdir=workdir)
    assert changed.manifest["steps"][0]["status"] == "ok"


def test_traceback_flag_shows_the_full_trace_of_an_expected_failure(run_toml, workdir):
    text = RUN.replace('mode = "upper"', 'fail = "expected"')
    plain = run_toml(text, workdir=workdir)
    assert "Traceback" not in plain.output
    full = run_toml(text, workdir=workdir, extra_args=("--traceback",))
    assert full.exit_code == 1
    assert "Traceback" in full.output and "hostkit_echo/plugin.py" in full.output and "runner.py" in full.output


def test_a_non_main_rank_takes_rank_zeros_resume_decision(workdir):
    """A stale .partial of another config: rank 0 starts afresh, and rank 1 must not 'resume' from it."""
    out = workdir / "out"
    stale = out / ".01-echo.partial"
    (stale / "checkpoint-5").mkdir(parents=True)
    (stale / ".hostkit-step.json").write_text('{"key": "some-other-config"}')
    (workdir / "run.toml").write_text(RUN)
    # rank 1 is started first and must wait for rank 0's decision
    env = dict(os.environ, WORLD_SIZE="2")
    rank1 = subprocess.Popen([sys.executable, "-m", "hostkit", "run", "run.toml"], cwd=workdir,
                             env=dict(env, RANK="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    rank0 = subprocess.run([sys.executable, "-m", "hostkit", "run", "run.toml"], cwd=workdir,
                           env=dict(env, RANK="0"), capture_output=True, text=True)
    output1, _ = rank1.communicate(timeout=120)
    assert rank0.returncode == 0 and rank1.returncode == 0, rank0.stderr + output1
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["resumed"] for s in manifest["steps"]] == [False, False]
    assert not (out / "01-echo" / "checkpoint-5").exists()
