"""Options of the ExtractAdapters pass (light: no onnx, no onnxruntime)."""

from __future__ import annotations

import attrs

from hostkit import one_of, option

SAVE_FORMATS = ("onnx_adapter", "numpy", "safetensors")


@attrs.frozen
class ExtractAdaptersConfig:
    """Options of ``type = "ExtractAdapters"``."""

    make_inputs: bool = option(True, help="adapter weights become graph inputs (one session serves every adapter); "
                                          "false: external initializers supplied when a session is created")
    pack_inputs: bool = option(False, help="stack each module type's weights across layers into one input, "
                                           "split inside the graph")
    dynamic_lora_r: bool = option(True, help="with make_inputs: the rank is a symbolic dimension (lora_r), so "
                                             "adapters of any rank fit")
    optional_inputs: bool = option(True, help="with make_inputs: zero-size defaults, so a run without adapter "
                                              "is the base model")
    save_format: str = option("onnx_adapter", help="adapter weights file: onnx_adapter (onnxruntime AdapterFormat), "
                                                   "numpy (.npz) or safetensors", validator=one_of(*SAVE_FORMATS))

