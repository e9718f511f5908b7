"""hostkit's conformance suite for the OnnxConversion exporter."""

from __future__ import annotations

from hostkit.testing.conformance import PassConformance


class TestOnnxConversionConformance(PassConformance):
    plugin_name = "onnx_export"
    pass_type = "OnnxConversion"
    valid_options = {"exporter": "torchscript", "target_opset": 17, "torch_dtype": "float32"}
    invalid_options = [({"exporter": "tracing"}, "exporter"), ({"target_opset": 0}, "target_opset"),
                       ({"opset": 18}, "opset")]
    run_file = """
    [model]
    type = "HfModel"
    path = "{tiny_llama}"
    [[passes]]
    type = "OnnxConversion"
    exporter = "torchscript"
    [output]
    dir = "out"
    """
