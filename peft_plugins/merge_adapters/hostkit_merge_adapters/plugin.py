"""Entry-point target of hostkit-merge-adapters: hookimpls only, no heavy imports."""

from __future__ import annotations

from typing import Any

from hostkit import PassSpec, Requirements, hookimpl
from hostkit_merge_adapters.config import MergeAdapterWeightsConfig

PASS_TYPE = "MergeAdapterWeights"


def run_merge(config: MergeAdapterWeightsConfig, model: Any, context: Any) -> Any:
    from hostkit_merge_adapters.merge import merge_adapter  # torch, peft: only when the pass runs

    return merge_adapter(model, config, context.output_dir, context)


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(
        name=PASS_TYPE,
        config_cls=MergeAdapterWeightsConfig,
        run=run_merge,
        summary="merge a LoRA adapter into its base (a 4-bit base is dequantized first) and save a full model",
        requires=Requirements(modules={"torch": "torch>=2.2", "transformers": "transformers>=4.45",
                                       "peft": "peft>=0.13", "safetensors": "safetensors>=0.4"},
                              gpu="no", notes="a QLoRA output also needs bitsandbytes>=0.50 (CPU works)"),
        input_types=("HfModel",),
        output_type="HfModel",
        output_clears=("adapter_path",),  # the adapter is in the weights now: validate tells later passes
    ))
