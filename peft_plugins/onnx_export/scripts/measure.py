"""Figures of the README: merge and ONNX logit differences and export times on the tiny Llama.

Run from the repository root: ``.venv/bin/python peft_plugins/onnx_export/scripts/measure.py [WORKDIR]``
(needs hostkit-merge-adapters, hostkit-onnx-export, bitsandbytes and onnxruntime installed).
"""
import sys, time, json
from pathlib import Path
import torch
from hostkit import HfModel
from hostkit.testing.tiny import build_tiny_llama, make_lora_adapter
from hostkit_merge_adapters.merge import merge_adapter
from hostkit_merge_adapters.config import MergeAdapterWeightsConfig
from hostkit_onnx_export.export import export_onnx
from hostkit_onnx_export.config import OnnxConversionConfig
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from peft import PeftModel
import onnxruntime as ort
W = Path(sys.argv[1] if len(sys.argv) > 1 else "measure-work"); W.mkdir(parents=True, exist_ok=True); base = W / "tiny"
if not base.exists(): build_tiny_llama(base)
ad = W / "ad"
if not ad.exists(): make_lora_adapter(base, ad, rank_pattern={"v_proj": 2}, alpha_pattern={"up_proj": 4})
g = torch.Generator().manual_seed(7); ids = torch.randint(3, 500, (2, 9), generator=g); mask = torch.ones_like(ids); mask[1, 6:] = 0
pos = (mask.cumsum(-1) - 1).clamp(min=0); mk = mask.bool()
def logits(m): 
    with torch.no_grad(): return m.eval()(input_ids=ids, attention_mask=mask, position_ids=pos).logits
def d(a, b): return float((a - b).abs()[mk].max())
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}
peft_f = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(ad)))
q = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, device_map="cpu", quantization_config=BitsAndBytesConfig(**NF4))
peft_q = logits(PeftModel.from_pretrained(q, str(ad)))
res = {}
t = time.time(); merge_adapter(HfModel(path=str(base), adapter_path=str(ad)), MergeAdapterWeightsConfig(), W / "m1"); res["merge_s"] = round(time.time() - t, 2)
res["merge_float_delta"] = d(logits(AutoModelForCausalLM.from_pretrained(W / "m1", dtype=torch.float32)), peft_f)
t = time.time(); merge_adapter(HfModel(path=str(base), adapter_path=str(ad), quantization=NF4), MergeAdapterWeightsConfig(), W / "m2"); res["merge_nf4_s"] = round(time.time() - t, 2)
res["merge_nf4_delta"] = d(logits(AutoModelForCausalLM.from_pretrained(W / "m2", dtype=torch.float32)), peft_q)
res["float_base_vs_nf4_peft_delta (Olive's merge target)"] = d(peft_f, peft_q)
def ortd(path, ref):
    s = ort.InferenceSession(str(path)); o = s.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()})[0]
    return float(abs(o - ref.numpy())[mk.numpy()].max())
for exporter, optimize in (("torchscript", True), ("dynamo", False), ("dynamo", True)):
    for merged in (False, True):
        key = f"{exporter}{'' if exporter=='torchscript' else ('-opt' if optimize else '-noopt')}-{'merged' if merged else 'adapter'}"
        t = time.time()
        h = export_onnx(HfModel(path=str(base), adapter_path=str(ad)), OnnxConversionConfig(exporter=exporter, optimize=optimize, merge_adapter_weights=merged), W / key)
        res[key + "_total_s"] = round(time.time() - t, 2)
        res[key + "_delta"] = ortd(h.path, peft_f); res[key + "_names"] = len(h.adapter_names)
        print(key, res[key + "_total_s"], res[key + "_delta"], flush=True)
print(json.dumps(res, indent=1))
