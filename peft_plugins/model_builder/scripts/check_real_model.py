"""ModelBuilder -> ExtractAdapters -> og.Model + og.Adapters on a real model, against torch PEFT.

    python peft_plugins/model_builder/scripts/check_real_model.py BASE_DIR ADAPTER_DIR [--precision fp32|int4]
        [--prompt "Write the date as YYYY-MM-DD: The treaty was signed on the 5th of March, 1987."]

BASE_DIR: a float model folder (e.g. the quickstart's converted SmolLM2, ~/.cache/hostkit/gguf/...),
ADAPTER_DIR: a PEFT LoRA adapter for it (e.g. runs/quickstart/01-dates/adapter). Prints the build
time, the folder size, and for no adapter and the adapter: whether the greedy tokens equal torch
PEFT's, both completions, and max |delta prompt logits| relative to the logits' scale.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("adapter")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int4"))
    parser.add_argument("--prompt", default="Write the date as YYYY-MM-DD: The treaty was signed on the 5th of March, 1987.")
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hostkit import HfModel
    from hostkit_extract_adapters.extract import extract_adapters
    from hostkit_model_builder.build import build_model
    from hostkit_model_builder.config import ModelBuilderConfig
    from hostkit_model_builder.testing import GenaiModel

    work = Path(tempfile.mkdtemp(prefix="check-real-model-"))
    start = time.perf_counter()
    built = build_model(HfModel(path=args.base, adapter_path=args.adapter), ModelBuilderConfig(precision=args.precision),
                        work / "built")
    print(f"build: {time.perf_counter() - start:.1f} s, "
          f"{sum(p.stat().st_size for p in Path(built.path).parent.iterdir()) / 2**20:.0f} MB ({args.precision})")
    extracted = extract_adapters(built.path, work / "extracted", tokenizer_dir=Path(built.path).parent)
    served = GenaiModel(extracted.model_path.parent, {"adapter": extracted.weights_path})
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                        tokenize=True)
    ids = list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)
    for name, adapter in (("none", None), ("adapter", args.adapter)):
        model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapter)
        model.eval()
        out = list(ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
            for _ in range(args.new_tokens):
                out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
                if out[-1] == tokenizer.eos_token_id:
                    break
        expected = out[len(ids):]
        active = None if adapter is None else name
        got = served.greedy(ids, args.new_tokens, active)
        delta = np.abs(served.prompt_logits(ids, active) - logits).max() / np.abs(logits).max()
        print(f"{name}: tokens equal: {got == expected}; genai {tokenizer.decode(got)!r}; "
              f"torch {tokenizer.decode(expected)!r}; relative max |delta logits| {delta:.2g}")


if __name__ == "__main__":
    main()
