"""MergeAdapterWeights: fold a LoRA adapter into its base and save a complete model folder.

``W' = W + scaling * B A`` for every adapted linear layer (Hu et al. 2021,
arXiv:2106.09685, section 4.1: "we can explicitly compute and store W = W0 + BA
and perform inference as usual"), done by peft's ``merge_and_unload``. The
merge runs in float32 over the base :mod:`hostkit_merge_adapters.loading`
returns (dequantized first when the base is 4-bit), then the model is cast to
the requested dtype and written with ``save_pretrained`` (safetensors), with
the generation config, the tokenizer and any processor files, so that
``AutoModelFor*.from_pretrained(output)`` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from hostkit import PassError
from hostkit_adapters import contract as adapter_contract
from hostkit_merge_adapters.files import read_adapter_config, writing_to
from hostkit_merge_adapters.loading import (copy_processor_files, load_with_adapter, save_tokenizer,
                                            tokenizer_source, torch_dtype)


@torch.no_grad()
def merge_adapter(model: Any, config: Any, output_dir: Path, context: Any = None) -> Any:
    """Merge ``model.adapter_path`` into ``model.path``; write the result into ``output_dir``."""
    if not model.adapter_path:
        raise PassError(f"the input model ({model.path}) has no adapter_path, so there is nothing to merge: "
                        "put MergeAdapterWeights after a LoRA/QLoRA/LoftQ pass, or set adapter_path in [model]")
    adapter_config = read_adapter_config(Path(model.adapter_path))
    if str(adapter_config.get("peft_type", "LORA")).upper() != "LORA":
        raise PassError(f"{model.adapter_path} holds a {adapter_config.get('peft_type')} adapter; "
                        "MergeAdapterWeights merges LoRA adapters (including DoRA and rsLoRA)")
    if context is not None and not context.is_main_process:
        # under torchrun only rank 0 writes; the others return the same handle without the work
        return _output_handle(model, config, Path(output_dir), tokenizer_source(model) is not None)
    if context is not None:
        context.progress("loading base and adapter")
    peft_model, facts = load_with_adapter(model, dtype="float32")
    if context is not None:
        context.progress("merging")
    merged = peft_model.merge_and_unload(progressbar=False, safe_merge=True)
    merged = merged.to(torch_dtype(config.torch_dtype))
    output_dir = Path(output_dir)
    with writing_to(output_dir):  # a full disk is the machine's error, naming the path
        output_dir.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(output_dir, safe_serialization=True, max_shard_size=config.max_shard_size)
        if getattr(merged, "generation_config", None) is not None and not (output_dir / "generation_config.json").exists():
            merged.generation_config.save_pretrained(output_dir)
        has_tokenizer = save_tokenizer(model, output_dir)
        processor_files = copy_processor_files(model, output_dir)
    if context is not None:
        context.note(**facts, merged_from=adapter_contract.base_model_identity(model.path),
                     adapter_path=model.adapter_path, torch_dtype=config.torch_dtype,
                     tokenizer=has_tokenizer, processor_files=processor_files)
    return _output_handle(model, config, output_dir, has_tokenizer)


def _output_handle(model: Any, config: Any, output_dir: Path, has_tokenizer: bool) -> Any:
    return attrs.evolve(model, path=str(output_dir), adapter_path=None, quantization=None,
                        torch_dtype=config.torch_dtype, gguf_file=None,
                        tokenizer_path=None if has_tokenizer else model.tokenizer_path)
