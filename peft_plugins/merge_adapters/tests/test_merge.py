"""MergeAdapterWeights: merged == base + adapter, for a float base and a 4-bit (QLoRA) base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostkit import HfModel
from hostkit_merge_adapters.config import MergeAdapterWeightsConfig
from hostkit_merge_adapters.merge import merge_adapter

torch = pytest.importorskip("torch")


def _peft_logits(base, adapter: Path, batch):
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids, mask = batch
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _merged_logits(path: Path, batch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids, mask = batch
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def _unmasked_max_delta(a, b, batch) -> float:
    _, mask = batch
    return (a - b).abs()[mask.bool()].max().item()


RUN = """
[model]
type = "HfModel"
path = "{base}"
adapter_path = "{adapter}"
{extra}
[[passes]]
type = "MergeAdapterWeights"
{options}
[output]
dir = "out"
"""


def test_merged_equals_base_plus_adapter(tiny_llama, tiny_adapter, run_toml, batch):
    from transformers import AutoModelForCausalLM

    result = run_toml(RUN.format(base=tiny_llama, adapter=tiny_adapter, extra="", options=""))
    assert result.exit_code == 0, result.output
    step = result.step(0)
    out = Path(step["output"]["path"])
    assert step["output"]["adapter_path"] is None and step["output"]["quantization"] is None
    assert step["notes"]["dequantized"] is False
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names, names
    assert "adapter_config.json" not in names
    assert not any(n.endswith(".bin") for n in names)

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    reference = _peft_logits(base, tiny_adapter, batch)
    merged = _merged_logits(out, batch)
    delta = _unmasked_max_delta(merged, reference, batch)
    assert delta <= 1e-4, delta
    # the adapter really changes the model (otherwise the check above proves nothing)
    plain = _merged_logits(tiny_llama, batch)
    assert _unmasked_max_delta(plain, reference, batch) > 1e-2


def test_merge_writes_requested_dtype(tiny_llama, tiny_adapter, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "merged"
    handle = HfModel(path=str(tiny_llama), adapter_path=str(tiny_adapter))
    result = merge_adapter(handle, MergeAdapterWeightsConfig(torch_dtype="bfloat16"), out)
    assert result.torch_dtype == "bfloat16" and result.path == str(out)
    with safe_open(out / "model.safetensors", "pt") as fh:
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
    assert dtypes == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text()).get("dtype") == "bfloat16"


def test_qlora_base_is_dequantized_before_merge(tiny_llama, tiny_adapter, run_toml, batch, nf4):
    """A 4-bit nf4 base: the merged float model equals the PEFT model over the dequantized 4-bit base.

    The reference is built explicitly (float32 layers holding ``dequantize_4bit`` of the stored weights),
    not taken from the 4-bit model's forward, whose kernel differs between CPUs."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from hostkit_merge_adapters.testing import dequantized_reference, load_4bit, relative_delta

    extra = "[model.quantization]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in nf4.items())
    result = run_toml(RUN.format(base=tiny_llama, adapter=tiny_adapter, extra=extra, options=""))
    assert result.exit_code == 0, result.output
    step = result.step(0)
    assert step["notes"]["dequantized"] is True and step["notes"]["dequantized_modules"] == 14
    assert step["notes"]["quantized_kernel_deviation"]["relative"] <= 3e-2
    assert step["output"]["quantization"] is None
    out = Path(step["output"]["path"])
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config

    reference = _peft_logits(dequantized_reference(load_4bit(str(tiny_llama), nf4)), tiny_adapter, batch)
    merged = _merged_logits(out, batch)
    assert relative_delta(merged, reference, batch[1]) <= 1e-5

    # Olive's way (merge into the original float base) is measurably different
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    float_merge = _peft_logits(base, tiny_adapter, batch)
    assert _unmasked_max_delta(float_merge, reference, batch) > 1e-3


def test_no_adapter_is_a_clear_error(tiny_llama, run_toml):
    text = RUN.format(base=tiny_llama, adapter="x", extra="", options="").replace('adapter_path = "x"\n', "")
    result = run_toml(text)
    assert result.exit_code == 1, result.output
    assert "has no adapter_path, so there is nothing to merge" in result.output
    assert "passes[0]" in result.output and "hostkit-merge-adapters" in result.output
    assert "Traceback" not in result.output


def test_non_lora_adapter_is_refused(tiny_llama, tmp_path):
    from hostkit import PassError

    adapter = tmp_path / "ia3"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(PassError, match="IA3 adapter"):
        merge_adapter(HfModel(path=str(tiny_llama), adapter_path=str(adapter)), MergeAdapterWeightsConfig(),
                      tmp_path / "out")


def test_text_classification_adapter_with_trained_head(tiny_llama, tmp_path):
    """A SEQ_CLS adapter (LoRA + a trained copy of the score head): the merged classifier equals the PEFT one."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(3)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=3, dtype=torch.float32)
    base.save_pretrained(tmp_path / "cls-base")  # with its (random) head, so both sides below share it
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type="SEQ_CLS"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:  # "train" the LoRA B and the head copy
                param.add_(torch.randn_like(param) * 0.05)
    adapter = tmp_path / "cls-lora"
    peft_model.save_pretrained(adapter)

    handle = HfModel(path=str(tmp_path / "cls-base"), task="text-classification", num_labels=3,
                     adapter_path=str(adapter), tokenizer_path=str(tiny_llama))
    out = merge_adapter(handle, MergeAdapterWeightsConfig(), tmp_path / "merged")
    assert out.task == "text-classification" and out.num_labels == 3
    ids = torch.randint(3, 500, (1, 7))
    reference_model = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls-base", num_labels=3), str(adapter)).eval()
    merged_model = AutoModelForSequenceClassification.from_pretrained(out.path).eval()
    with torch.no_grad():
        reference = reference_model(input_ids=ids).logits
        merged = merged_model(input_ids=ids).logits
    assert merged.shape == (1, 3)
    with torch.no_grad():  # the trained head matters: the base's own head gives other logits
        untouched = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls-base").eval()(input_ids=ids).logits
    assert (untouched - reference).abs().max().item() > 1e-3
    assert (merged - reference).abs().max().item() <= 1e-4
    assert (Path(out.path) / "tokenizer.json").is_file()
