"""The deployment end to end, as examples/genai_*.toml run it, served by a script importing nothing from hostkit.

LoRA (adapter A) -> ModelBuilder -> ExtractAdapters in one run; adapter B trained by LoRA in a
separate run and converted with ``hostkit convert-adapters --model``; examples/genai_serve.py
(one og.Model + og.Adapters) generates greedily for no adapter, A and B. At fp32 the tokens equal
torch PEFT's; the int4 run file of the example runs as it is. The same with QLoRA (4-bit base,
dequantized by ModelBuilder), the case Olive's users could not serve.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("onnxruntime_genai")

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PROMPTS = ("Q: Repeat the word cat.", "Question: Repeat the word red.")
NEW_TOKENS = 10


def _run_file(name: str, precision: str | None = None) -> str:
    """An example run file with absolute data/model paths, 3 training steps, and optionally another precision."""
    text = (EXAMPLES / name).read_text()
    text = text.replace('"models/tiny-llama"', f'"{EXAMPLES / "models" / "tiny-llama"}"')
    text = text.replace('"data/tiny_train.jsonl"', f'"{EXAMPLES / "data" / "tiny_train.jsonl"}"')
    text = text.replace("max_steps = 10", "max_steps = 3")
    assert 'dir = "../runs/examples/' in text
    text = text.replace('dir = "../runs/examples/', 'dir = "out/')
    if precision is not None:
        assert 'precision = "int4"' in text
        text = text.replace('precision = "int4"', f'precision = "{precision}"')
    return text


def _serve(model_dir: Path, adapters: dict[str, Path], prompt_ids: list[list[int]]) -> list[dict]:
    """Run examples/genai_serve.py in a fresh interpreter; check that it imported nothing from hostkit."""
    wrapper = ("import runpy, sys; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__'); "
               "print('HOSTKIT_MODULES=' + ','.join(sorted(m for m in sys.modules if m.startswith('hostkit'))))")
    args = [sys.executable, "-c", wrapper, str(EXAMPLES / "genai_serve.py"), str(model_dir),
            "--max-new-tokens", str(NEW_TOKENS)]
    for name, path in adapters.items():
        args += ["--adapter", f"{name}={path}"]
    for ids in prompt_ids:
        args += ["--prompt-ids", json.dumps(ids)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "HOSTKIT_MODULES=", lines[-1]
    return [json.loads(line) for line in lines[:-1]]


def _torch_greedy(base: Path, adapter: str | None, ids: list[int], *, quantization: dict | None = None) -> list[int]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if quantization:  # what QLoRA trained against: the base as MergeAdapterWeights dequantizes it
        from hostkit import HfModel
        from hostkit_merge_adapters.loading import load_base

        model, _ = load_base(HfModel(path=str(base), quantization=quantization))
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out = list(ids)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
            if out[-1] == model.generation_config.eos_token_id:  # genai stops there too
                break
    return out[len(ids):]


def _prompt_ids() -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EXAMPLES / "models" / "tiny-llama")
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def adapter_b(tmp_path_factory) -> Path:
    from hostkit.testing.runs import run_toml

    result = run_toml(_run_file("genai_second_adapter.toml"), tmp_path_factory.mktemp("second"))
    assert result.exit_code == 0, result.output
    return Path(result.final_model().adapter_path)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_lora_builder_extract_then_a_second_adapter_served_by_genai(tmp_path, cli, adapter_b, precision):
    from hostkit.testing.runs import run_toml

    result = run_toml(_run_file("genai_adapters.toml", precision), tmp_path)
    assert result.exit_code == 0, result.output
    steps = result.manifest["steps"]
    adapter_a = steps[0]["output"]["adapter_path"]
    extracted = result.final_model()
    folder = Path(extracted.path).parent
    assert (folder / "genai_config.json").is_file() and extracted.adapter_mode == "inputs"
    b_file = tmp_path / "b.onnx_adapter"
    code, output = cli("convert-adapters", "-a", str(adapter_b), "-o", str(b_file), "--model", extracted.path)
    assert code == 0, output
    prompts = _prompt_ids()
    lines = _serve(folder, {"a": Path(extracted.adapter_weights), "b": b_file}, prompts)
    assert [(line["adapter"], line["prompt_ids"]) for line in lines] == [(a, p) for p in prompts for a in ("none", "a", "b")]
    served = {(line["adapter"], tuple(line["prompt_ids"])): line["tokens"] for line in lines}
    base = EXAMPLES / "models" / "tiny-llama"
    expected = {(name, tuple(p)): _torch_greedy(base, adapter, p)
                for p in prompts for name, adapter in (("none", None), ("a", adapter_a), ("b", str(adapter_b)))}
    # the adapters change the outputs, so equal tokens are not an accident of the base model
    assert len({tuple(v) for v in expected.values()}) > len(prompts)
    if precision == "fp32":
        assert served == expected
    else:
        assert all(0 < len(tokens) <= NEW_TOKENS for tokens in served.values())
        same = sum(s == e for key in expected for s, e in zip(served[key], expected[key]))
        print(f"int4: {same} of {len(expected) * NEW_TOKENS} greedy tokens equal torch PEFT's (fp32)")


def test_qlora_builder_extract_served_by_genai(tmp_path):
    pytest.importorskip("bitsandbytes")
    from hostkit.testing.runs import run_toml

    result = run_toml(_run_file("genai_qlora.toml", "fp32"), tmp_path)
    assert result.exit_code == 0, result.output
    steps = result.manifest["steps"]
    qlora = steps[0]["output"]
    assert qlora["quantization"] and steps[1]["notes"]["dequantized"] is True
    extracted = result.final_model()
    prompts = _prompt_ids()
    lines = _serve(Path(extracted.path).parent, {"q": Path(extracted.adapter_weights)}, prompts)
    base = EXAMPLES / "models" / "tiny-llama"
    for line in lines:
        adapter = None if line["adapter"] == "none" else qlora["adapter_path"]
        expected = _torch_greedy(base, adapter, line["prompt_ids"], quantization=qlora["quantization"])
        assert line["tokens"] == expected, line
