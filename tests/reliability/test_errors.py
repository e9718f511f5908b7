"""Issue 12.8: errors blame the right party.

An unreadable or malformed input file is the user's error (one line naming the file and what is
wrong: exit 2 before work starts, exit 1 during a pass); an ``OSError`` on output is the
machine's (one line naming the path and the step); only the rest is "bug in the plugin". When
writing the manifest fails after a step failed, the step's own error is the one reported.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from reliability.support import BUG, TRACEBACK, assert_user_error, cli, echo_run, peft_config, run_limited, \
    write_peft_folder

# -- a corrupt model file during a merge (slow: torch, transformers, peft) ----------------------

MERGE = '''
[model]
type = "HfModel"
path = "{model}"
adapter_path = "{adapter}"
[[passes]]
type = "MergeAdapterWeights"
[output]
dir = "out"
'''


@pytest.fixture(scope="module")
def merge_adapter(tiny_llama, tmp_path_factory):
    from hostkit.testing.tiny import make_lora_adapter

    return make_lora_adapter(tiny_llama, tmp_path_factory.mktemp("adapter") / "adapter", seed=1)


def _corrupt(path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2],
                      "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
                      "empty": b""}[how])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "random", "empty"])
def test_a_corrupt_model_file_during_a_merge_is_one_line_naming_the_file(run_toml, tmp_path, tiny_llama,
                                                                        merge_adapter, how):
    model = shutil.copytree(tiny_llama, tmp_path / "model")
    _corrupt(model / "model.safetensors", how)
    result = run_toml(MERGE.format(model=model, adapter=merge_adapter))
    assert_user_error(result.exit_code, result.output, 1, str(model / "model.safetensors"),
                      "passes[0] (MergeAdapterWeights)")
    errors = [line for line in result.output.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and str(model / "model.safetensors") in errors[0], result.output
    assert result.manifest["status"] == "failed" and not (tmp_path / "out" / "01-mergeadapterweights").exists()


@pytest.mark.slow
def test_a_full_disk_during_a_merge_names_the_path_and_the_step(tmp_path, tiny_llama, merge_adapter):
    (tmp_path / "run.toml").write_text(MERGE.format(model=tiny_llama, adapter=merge_adapter))
    size = (tiny_llama / "model.safetensors").stat().st_size
    done = run_limited(["run", "run.toml"], tmp_path, nbytes=size // 4)
    output = done.stdout + done.stderr
    assert_user_error(done.returncode, output, 1, "passes[0] (MergeAdapterWeights)", str(tmp_path / "out"))
    assert "File too large" in output or "No space left" in output, output


@pytest.mark.slow
@pytest.mark.parametrize("case", ["config-list", "config-not-json", "no-alpha", "string-r", "corrupt-weights"])
def test_a_malformed_adapter_during_a_merge_is_one_line_naming_the_file(run_toml, tmp_path, tiny_llama,
                                                                        merge_adapter, case):
    adapter = shutil.copytree(merge_adapter, tmp_path / "adapter")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if case == "config-list":
        config_path.write_text("[]")
    elif case == "config-not-json":
        config_path.write_text("{")
    elif case == "no-alpha":  # peft would fill in lora_alpha = 8: a scale the adapter was not trained with
        config.pop("lora_alpha")
        config_path.write_text(json.dumps(config))
    elif case == "string-r":
        config_path.write_text(json.dumps({**config, "r": "4"}))
    else:
        _corrupt(adapter / "adapter_model.safetensors", "truncated")
    culprit = adapter / ("adapter_model.safetensors" if case == "corrupt-weights" else "adapter_config.json")
    result = run_toml(MERGE.format(model=tiny_llama, adapter=adapter))
    assert_user_error(result.exit_code, result.output, 1, str(culprit), "passes[0] (MergeAdapterWeights)")
    if case in ("no-alpha", "string-r"):
        assert ("lora_alpha" if case == "no-alpha" else "r must be a positive number") in result.output


@pytest.mark.slow
def test_a_merge_refuses_trust_remote_code_inside_load_kwargs(run_toml, tiny_llama, merge_adapter):
    text = MERGE.format(model=tiny_llama, adapter=merge_adapter).replace(
        "[[passes]]", "load_kwargs = { trust_remote_code = true }\n[[passes]]")
    result = run_toml(text)
    assert result.exit_code == 2, result.output  # validate refuses it (test_validation.py); the merge would too
    line = [line for line in result.output.splitlines() if "model.load_kwargs" in line]
    assert line and "trust_remote_code" in line[0] and TRACEBACK not in result.output, result.output
    assert not (result.output_dir / "01-mergeadapterweights").exists()


# -- the machine's errors name the step and the path (fast: the Echo test plugin) ---------------

def test_a_full_disk_inside_a_step_names_the_step_and_the_path(workdir):
    (workdir / "run.toml").write_text(echo_run(passes=f'[[passes]]\ntype = "Echo"\nmessage = "{"x" * 999}"\n'
                                                      'repeat = 200\n'))
    done = run_limited(["run", "run.toml"], workdir, nbytes=64 * 1024)
    output = done.stdout + done.stderr
    assert_user_error(done.returncode, output, 1, "passes[0] (Echo)", "File too large")
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and str(workdir / "out") in errors[0], output
    assert json.loads((workdir / "out" / "manifest.json").read_text())["status"] == "failed"


def test_the_first_error_is_kept_when_the_manifest_write_fails(workdir):
    # a disk that fills up: the step's 2 KB echo.txt fails first, then the ~3 KB manifest cannot be written either
    (workdir / "run.toml").write_text(echo_run(passes=f'[[passes]]\ntype = "Echo"\nmessage = "{"x" * 2000}"\n'))
    done = run_limited(["run", "run.toml"], workdir, nbytes=1024)
    output = done.stdout + done.stderr
    assert_user_error(done.returncode, output, 1, "passes[0] (Echo)", "File too large")
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert errors and "passes[0] (Echo)" in errors[0], output  # the step's error comes first, not the manifest's
    assert "manifest.json" in output, output  # the manifest problem is said too


# -- convert-adapters and infer on malformed adapter files --------------------------------------

CONVERT_CASES = {
    "config-list": ("[]", "adapter_config.json"),
    "config-number": ("42", "adapter_config.json"),
    "string-r": (peft_config(r="2"), "r"),
    "string-alpha": (peft_config(lora_alpha="4"), "lora_alpha"),
    "garbage-weights": (peft_config(), "adapter_model.safetensors"),
}


# each used to be a TypeError/SafetensorError traceback, or (string r / lora_alpha) converted as if fine
@pytest.mark.parametrize("case", ["config-list", "config-number", "string-r", "string-alpha", "garbage-weights"])
def test_convert_adapters_refuses_a_malformed_adapter_in_one_line(tmp_path, case):
    config, needle = CONVERT_CASES[case]
    adapter = write_peft_folder(tmp_path / "adapter", config)
    if case == "garbage-weights":
        (adapter / "adapter_model.safetensors").write_bytes(os.urandom(2048))
    code, output = cli(["convert-adapters", "--adapter-path", str(adapter), "--output-path", str(tmp_path / "w"),
                        "--adapter-format", "numpy"], tmp_path)
    assert_user_error(code, output, 2, str(adapter), needle)
    assert not list(tmp_path.glob("w*"))


@pytest.mark.parametrize("where", ["npz-metadata", "sidecar"])
def test_infer_refuses_adapter_metadata_that_is_not_a_table(tmp_path, extracted_toy, where):
    model, weights = extracted_toy
    with np.load(weights, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != "__metadata__"}
    if where == "npz-metadata":
        bad = tmp_path / "bad.npz"
        with open(bad, "wb") as fh:
            np.savez(fh, **arrays, __metadata__=np.array(json.dumps([1, 2])))
    else:
        from hostkit_extract_adapters.weights import save_weights

        bad = save_weights(arrays, tmp_path / "bad", "onnx_adapter", {})
        (tmp_path / "bad.onnx_adapter.json").write_text("[1, 2]")
    code, output = cli(["infer", str(model), "--adapter", f"bad={bad}", "--prompt", "hi"], tmp_path)
    assert_user_error(code, output, 2, str(bad), "metadata")
