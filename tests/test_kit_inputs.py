"""The test kit's prepared inputs and torch helpers: ``tiny_lora``, ``tiny_jsonl``, :mod:`hostkit.testing.models`,
and the conformance suite run for an adapter-consuming pass with no other hostkit plugin loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hostkit.handles import HfModel
from hostkit.testing.models import check_adapter_loads, compare_logits, fixed_batch, load_handle, logits
from hostkit.testing.tiny import TINY_ROWS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _reference_logits(base: Path, adapter: Path | None, batch: dict) -> "torch.Tensor":  # noqa: F821
    """transformers (+ peft) by hand: the reference the kit's helpers must reproduce."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        out = model.eval()(**batch).logits.float()
    return out * batch["attention_mask"].unsqueeze(-1)


def test_tiny_lora_is_a_peft_adapter_that_changes_the_logits(tiny_llama, tiny_lora):
    config = json.loads((tiny_lora / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert sorted(config["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
    assert (tiny_lora / "tokenizer_config.json").is_file()  # as the LoRA family writes its adapter folder
    base, adapted = HfModel(path=str(tiny_llama)), HfModel(path=str(tiny_llama), adapter_path=str(tiny_lora))
    batch = fixed_batch(adapted)
    delta = compare_logits(base, adapted, batch)
    reference = (_reference_logits(tiny_llama, None, batch) - _reference_logits(tiny_llama, tiny_lora, batch))
    # the helper measures exactly what transformers + peft compute by hand ...
    assert abs(delta.max_abs_diff - reference.abs().max().item()) <= 1e-6 * delta.scale
    # ... and random B moves the logits well beyond float noise
    assert delta.relative > 1e-3, delta


def test_load_handle_and_logits_match_transformers_and_peft(tiny_llama, tiny_lora):
    handle = HfModel(path=str(tiny_llama), adapter_path=str(tiny_lora))
    model = load_handle(handle)
    assert type(model).__name__ == "PeftModelForCausalLM" and not model.training
    batch = fixed_batch(handle)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].sum() < batch["attention_mask"].numel()
    ours, reference = logits(model, batch), _reference_logits(tiny_llama, tiny_lora, batch)
    scale = reference.abs().max().item()
    assert (ours - reference).abs().max().item() <= 1e-6 * scale
    same = compare_logits(handle, model, batch)
    assert same.max_abs_diff <= 1e-6 * same.scale and same.same()


def test_tiny_jsonl_rows(tiny_jsonl):
    rows = [json.loads(line) for line in tiny_jsonl.read_text(encoding="utf-8").splitlines()]
    assert rows == TINY_ROWS and len(rows) == 8
    assert all(set(row) == {"text", "prompt", "response"} for row in rows)


def test_check_adapter_loads_names_what_is_wrong(tiny_llama, tiny_lora, tmp_path):
    assert check_adapter_loads(HfModel(path=str(tiny_llama))) is None  # no adapter: nothing to check
    assert check_adapter_loads(HfModel(path=str(tiny_llama), adapter_path=str(tiny_lora))) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_adapter_loads(HfModel(path=str(tiny_llama), adapter_path=str(empty))) == (
        f"adapter_path {empty}: no adapter_config.json (not a PEFT adapter folder)")
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((tiny_lora / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps(dict(config, target_modules=["no_such_proj"])))
    (broken / "adapter_model.safetensors").write_bytes((tiny_lora / "adapter_model.safetensors").read_bytes())
    problem = check_adapter_loads(HfModel(path=str(tiny_llama), adapter_path=str(broken)))
    assert problem is not None and problem.startswith(f"adapter_path {broken}: does not load in peft over {tiny_llama}")
    assert "no_such_proj" in problem


def _install_on_path(folder: Path, plugin_code: str) -> None:
    """hostkit-scale-adapter as pip would leave it: the package and a .dist-info with its entry point."""
    package = folder / "hostkit_scale_adapter"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(plugin_code)
    info = folder / "hostkit_scale_adapter-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostkit-scale-adapter\nVersion: 0.1.0\n"
                                   "Requires-Dist: hostkit-core<0.2,>=0.1\n")
    (info / "entry_points.txt").write_text("[hostkit.plugins]\nscale_adapter = hostkit_scale_adapter.plugin\n")
    (info / "top_level.txt").write_text("hostkit_scale_adapter\n")


CONFORMANCE = '''
from hostkit.testing.conformance import PassConformance


class TestScaleAdapterConformance(PassConformance):
    plugin_name = "scale_adapter"
    pass_type = "ScaleAdapter"
    valid_options = {"factor": 0.5}
    invalid_options = [({"factor": "half"}, "factor"), ({"factr": 0.5}, "factr")]
    load_only = ()
    run_file = """
    [model]
    type = "HfModel"
    path = "{tiny_llama}"
    adapter_path = "{tiny_lora}"

    [[passes]]
    type = "ScaleAdapter"
    factor = 0.5

    [output]
    dir = "out"
    """


def test_no_other_hostkit_plugin_is_loaded():
    host = TestScaleAdapterConformance()._host()
    loaded = sorted(r.name for r in host.records.values() if r.status == "loaded" and r.distribution)
    assert loaded == ["scale_adapter"], loaded
    others = sorted(r.name for r in host.records.values() if r.status == "disabled")
    print("disabled:", ",".join(others))
'''


@pytest.mark.slow
def test_conformance_suite_for_an_adapter_consuming_pass_alone(tmp_path):
    """The guide's ScaleAdapter, installed (a .dist-info on the path), through the whole conformance suite with
    only itself loaded: ``{tiny_lora}`` prepares its input, and the suite loads its output adapter in peft."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_docs import runnable_block
    finally:
        sys.path.remove(str(ROOT / "tests"))
    site = tmp_path / "site"
    _install_on_path(site, runnable_block((ROOT / "docs" / "writing-plugins.md").read_text(), "scale-adapter"))
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_conformance.py").write_text(textwrap.dedent(CONFORMANCE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTKIT_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "hostkit.testing", "-q", "-s", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tests)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "8 passed" in done.stdout, done.stdout[-2000:]
    disabled = next(line for line in done.stdout.splitlines() if "disabled:" in line)
    assert "lora" in disabled.split("disabled:")[1].split(","), disabled  # installed, and not loaded
