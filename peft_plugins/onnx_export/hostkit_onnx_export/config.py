"""Options of the OnnxConversion exporter (names follow Olive's OnnxConversion where it has them)."""

from __future__ import annotations

import attrs

from hostkit import one_of, option, positive


@attrs.frozen
class OnnxConversionConfig:
    """Options of ``type = "OnnxConversion"``."""

    target_opset: int = option(18, help="ONNX opset of the graph (the dynamo exporter needs >= 18)", validator=positive)
    exporter: str = option("dynamo", help="dynamo (torch.onnx.export(dynamo=True), the maintained path) or "
                                          "torchscript (the deprecated tracer: ~10x faster on small models)",
                           validator=one_of("dynamo", "torchscript"))
    optimize: bool = option(True, help="run the dynamo exporter's graph optimizer (constant folding); adapter names survive it")
    torch_dtype: str = option("float32", help="dtype of the exported weights: float32 or float16",
                              validator=one_of("float32", "float16"))
    merge_adapter_weights: bool = option(False, help="merge the model's LoRA adapter into the base before export "
                                                     "(no adapter weights in the graph)")
    use_position_ids: bool = option(True, help="add a position_ids input when the model's forward takes one "
                                               "(needed for left padding and for with_past)")
    with_past: bool = option(False, help="export a KV-cache model: past_key_values.N.key/value inputs, "
                                         "present.N.key/value outputs (text-generation only)")
    save_as_external_data: bool = option(False, help="store the weights in model.onnx.data next to the graph "
                                                     "(always done above 2 GB)")
    check_outputs: bool = option(False, help="after export, run onnxruntime on a sample batch and record the max "
                                             "logit difference to torch (needs onnxruntime)")
    check_tolerance: float = option(1e-4, help="with check_outputs: fail when max|ort - torch| / max(1, max|torch logits|) "
                                               "exceeds this (float32; float16 exports are checked at 100x)",
                                    validator=positive)
