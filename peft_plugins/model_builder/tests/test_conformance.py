"""hostkit's conformance suite for ModelBuilder."""

from __future__ import annotations

from hostkit.testing.conformance import PassConformance


class TestModelBuilderConformance(PassConformance):
    plugin_name = "model_builder"
    pass_type = "ModelBuilder"
    valid_options = {"precision": "fp32", "search": {"max_length": 64}, "extra_options": {"fuse_qkv": False}}
    invalid_options = [({"precision": "int3"}, "precision"), ({"int4_block_size": 48}, "int4_block_size"),
                       ({"int4_acuracy_level": 4}, "int4_acuracy_level")]
    run_file = """
    [model]
    type = "HfModel"
    path = "{tiny_llama}"
    [[passes]]
    type = "ModelBuilder"
    precision = "int4"
    [output]
    dir = "out"
    """
