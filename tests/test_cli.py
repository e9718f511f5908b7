"""The command line: help, plugins, passes, schema, exit codes, and no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from host_helpers import run_hostkit

HEAVY = ["torch", "transformers", "peft", "bitsandbytes", "onnxruntime", "onnxruntime_genai", "datasets"]


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["passes"], ["schema", "Echo"], ["plugins", "--json"]])
def test_light_commands_import_no_heavy_library(args, tmp_path):
    code = ("import sys\nfrom hostkit.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code\n"
            f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY=", result.stdout


def test_validate_imports_no_heavy_library(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "run.toml").write_text('[model]\ntype = "HfModel"\npath = "m"\n[[passes]]\ntype = "Echo"\n')
    code = ("import sys; from hostkit.cli import main; rc = main(['validate', 'run.toml']); "
            f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run.toml: ok (1 step: Echo)" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="


def test_python_dash_m_and_version(tmp_path):
    result = run_hostkit(["--version"], cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("hostkit ")


def test_usage_error_is_one_error_line_and_exit_2(tmp_path):
    result = run_hostkit(["run"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: ")


def test_missing_run_file_is_exit_2(tmp_path):
    result = run_hostkit(["run", "nope.toml"], cwd=tmp_path)
    assert result.returncode == 2 and "nope.toml: no such file" in result.stderr


def test_invalid_toml_is_exit_2_with_position(tmp_path):
    (tmp_path / "bad.toml").write_text("[model\n")
    result = run_hostkit(["validate", "bad.toml"], cwd=tmp_path)
    assert result.returncode == 2 and "invalid TOML" in result.stderr and "line 1" in result.stderr


def test_schema_is_a_commented_template_that_validates(tmp_path):
    result = run_hostkit(["schema", "echo"], cwd=tmp_path)
    assert result.returncode == 0
    text = result.stdout
    assert text.startswith("# Echo: write a message next to the model")
    assert '# text written to echo.txt\n# type: a string; default: \'hello\'\nmessage = "hello"' in text
    assert "# fail = " in text  # None defaults stay commented out
    (tmp_path / "m").mkdir()
    (tmp_path / "run.toml").write_text('[model]\ntype = "HfModel"\npath = "m"\n\n' + text)
    assert run_hostkit(["validate", "run.toml"], cwd=tmp_path).returncode == 0


def test_schema_markdown_and_unknown_pass(tmp_path):
    table = run_hostkit(["schema", "Echo", "--markdown"], cwd=tmp_path).stdout
    assert table.startswith("| option | type | default | meaning |")
    assert "| `repeat` | an integer | `1` | how many times to write it |" in table
    unknown = run_hostkit(["schema", "Ecko"], cwd=tmp_path)
    assert unknown.returncode == 2 and "did you mean 'Echo'?" in unknown.stderr


def test_passes_lists_summary_plugin_and_hardware(tmp_path):
    result = run_hostkit(["passes"], cwd=tmp_path)
    assert "Echo" in result.stdout and "write a message next to the model" in result.stdout
    assert "[hostkit-echo, CPU]" in result.stdout


def test_plugins_json_lists_internal_and_installed(tmp_path):
    records = {r["name"]: r for r in json.loads(run_hostkit(["plugins", "--json"], cwd=tmp_path).stdout)}
    assert records["hostkit.manifest"]["status"] == "internal"
    assert records["echo"]["status"] == "loaded"


def test_plugins_pip_args_from_plugins_toml(tmp_path):
    (tmp_path / "plugins.toml").write_text(
        '[plugins.a]\npath = "pa"\nextras = ["x"]\n[plugins.b]\nrequirement = "hostkit-b>=1"\n[plugins.c]\nrequirement = "c"\nenabled = false\n')
    result = run_hostkit(["plugins", "--pip-args", "--editable"], cwd=tmp_path)
    assert result.stdout.split() == ["-e", f"{tmp_path / 'pa'}[x]", "hostkit-b>=1"]


def test_libraries_are_installed_first_in_the_same_pip_command(tmp_path):
    (tmp_path / "plugins.toml").write_text(
        '[libraries.lib]\npath = "lib"\n[libraries.remote]\nrequirement = "hostkit-remote>=1"\n'
        '[plugins.a]\npath = "pa"\n')
    result = run_hostkit(["plugins", "--pip-args", "--editable"], cwd=tmp_path)
    assert result.stdout.split() == ["-e", str(tmp_path / "lib"), "hostkit-remote>=1", "-e", str(tmp_path / "pa")]
    listed = {r["name"] for r in json.loads(run_hostkit(["plugins", "--json"], cwd=tmp_path).stdout)}
    assert "lib" not in listed and "remote" not in listed  # a library is no plugin
    (tmp_path / "plugins.toml").write_text('[libraries.lib]\npath = "lib"\nrequirement = "x"\n')
    bad = run_hostkit(["plugins", "--pip-args"], cwd=tmp_path)
    assert bad.returncode == 2 and "libraries.lib: set path or requirement (one of them)" in bad.stderr, bad.stderr


def test_schema_of_the_run_files_own_tables(tmp_path):
    data = run_hostkit(["schema", "data"], cwd=tmp_path)
    assert data.returncode == 0 and "[data.NAME]" in data.stdout and "response_template" in data.stdout
    model = run_hostkit(["schema", "HfModel"], cwd=tmp_path)
    assert '[model]\ntype = "HfModel"' in model.stdout and "trust_remote_code = false" in model.stdout
    table = run_hostkit(["schema", "output", "--markdown"], cwd=tmp_path).stdout
    assert table.startswith("| option |") and "`dir`" in table


def test_unreadable_run_files_are_config_errors(tmp_path):
    (tmp_path / "bad.toml").write_bytes(b'[model]\ntype = "HfModel"\npath = "mod\xffel"\n')
    result = run_hostkit(["validate", "bad.toml"], cwd=tmp_path)
    assert result.returncode == 2 and "not UTF-8" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "afile").write_text("x")
    result = run_hostkit(["validate", "afile/x.toml"], cwd=tmp_path)
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_data_paths_are_relative_to_the_run_file_even_when_missing(tmp_path):
    (tmp_path / "sub" / "m").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text('{"text": "a"}\n')  # next to the cwd, not the run file
    (tmp_path / "sub" / "run.toml").write_text(
        '[model]\ntype = "HfModel"\npath = "m"\n[data.train]\ntype = "jsonl"\npath = "data/t.jsonl"\n'
        '[[passes]]\ntype = "Echo"\ntrain_data_config = "train"\n')
    result = run_hostkit(["validate", "sub/run.toml"], cwd=tmp_path)
    assert result.returncode == 2
    assert f"data.train.path: {tmp_path / 'sub' / 'data' / 't.jsonl'} does not exist" in result.stderr
