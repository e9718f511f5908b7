"""Options of the ModelBuilder pass (names follow Olive's ModelBuilder where it has them)."""

from __future__ import annotations

from typing import Any

import attrs

from hostkit import one_of, option

PRECISIONS = ("int4", "fp16", "bf16", "fp32")
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
#: extra options the pass sets from its own fields (or from the input handle)
OWN_EXTRA_OPTIONS = {"adapter_path": "the input handle's adapter_path", "int4_block_size": "int4_block_size",
                     "block_size": "int4_block_size", "int4_accuracy_level": "int4_accuracy_level",
                     "accuracy_level": "int4_accuracy_level", "int4_is_symmetric": "int4_is_symmetric",
                     "is_symmetric": "int4_is_symmetric", "exclude_embeds": "exclude_embeds",
                     "exclude_lm_head": "exclude_lm_head", "filename": "(always model.onnx)",
                     "config_only": "(a graph is always built)"}


@attrs.frozen
class ModelBuilderConfig:
    """Options of ``type = "ModelBuilder"``."""

    precision: str = option("int4", help="weights of the graph: int4 (MatMulNBits), fp16, bf16 or fp32",
                            validator=one_of(*PRECISIONS))
    execution_provider: str = option("cpu", help="onnxruntime execution provider the graph is built for "
                                                 "(cpu; cuda, dml, webgpu, ... passed to the builder)")
    int4_block_size: int = option(32, help="int4: weights per quantization block",
                                  validator=one_of(*INT4_BLOCK_SIZES))
    int4_accuracy_level: int | None = option(None, help="int4: MatMulNBits accuracy_level (1 fp32, 2 fp16, 3 bf16, "
                                                        "4 int8 activations); unset: the builder's default (4 on CPU)",
                                             validator=one_of(None, 1, 2, 3, 4))
    int4_is_symmetric: bool = option(True, help="int4: symmetric quantization (no zero points); false on a model with "
                                      "tied embeddings keeps the embedding float (genai cannot load it asymmetric)")
    int4_scheme: str = option("builder", help="int4: \"builder\" (onnxruntime-genai's RTN / k_quant) or \"q4_1\": "
                                              "llama.cpp's Q4_1 blocks (float scale and minimum per 32 weights), lossless "
                                              "for a base from a Q4_1 GGUF; LM head int8 (Q8_0, accuracy level 4)", validator=one_of("builder", "q4_1"))
    exclude_embeds: bool = option(False, help="leave the embedding layer out of the graph (inputs_embeds input)")
    exclude_lm_head: bool = option(False, help="leave the LM head out of the graph (hidden_states output)")
    quantize_adapter: bool = option(False, help="int4: quantize the LoRA MatMuls too (the builder's default); "
                                                "false keeps the adapter in float, as ExtractAdapters needs")
    merge_adapter_weights: bool = option(False, help="merge the input's LoRA adapter into the base first "
                                                     "(a graph without adapter weights)")
    search: dict[str, Any] = option(factory=dict, help="defaults for genai_config.json's search section, "
                                                      "e.g. {max_length = 256, do_sample = false}")
    extra_options: dict[str, Any] = option(factory=dict, help="other builder extra options, passed through "
                                                             "(e.g. {fuse_qkv = false}); values as the builder reads them")
