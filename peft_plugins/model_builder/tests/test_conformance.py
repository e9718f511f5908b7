"""hostkit's conformance suite for ModelBuilder."""

from __future__ import annotations

import subprocess
import sys

from hostkit.testing.conformance import HEAVY_MODULES, PassConformance


class TestModelBuilderConformance(PassConformance):
    plugin_name = "model_builder"
    heavy_modules = HEAVY_MODULES + ("onnxruntime_genai", "onnx_ir")
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


def test_cli_start_up_never_imports_onnxruntime_genai():
    """``hostkit --help``, ``passes``, ``schema ModelBuilder``: the optional builder stays out of start-up."""
    for args in (["--help"], ["passes"], ["schema", "ModelBuilder"]):
        code = ("import runpy, sys; sys.argv = ['hostkit', *sys.argv[1:]]\n"
                "try:\n    runpy.run_module('hostkit', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                "print('LOADED=' + ','.join(m for m in ('onnxruntime_genai', 'onnx_ir', 'torch') if m in sys.modules))")
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == "LOADED=", (args, done.stdout[-500:])
