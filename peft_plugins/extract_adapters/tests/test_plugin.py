"""The plugin's promises to the host: discovery, light imports, config, commands, a run file."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hostkit.testing.conformance import PassConformance


class TestExtractAdaptersConformance(PassConformance):
    plugin_name = "extract_adapters"
    pass_type = "ExtractAdapters"
    valid_options = {"make_inputs": True, "pack_inputs": True, "save_format": "numpy"}
    invalid_options = [({"save_format": "pt"}, "save_format"), ({"make_inputs": "yes"}, "make_inputs"),
                       ({"pack_input": True}, "pack_input")]
    heavy_modules = PassConformance.heavy_modules + ("numpy", "safetensors")

    def test_runs_on_tiny_model(self, tmp_path, toy, toy_input):  # an ONNX input: the toy contract graph
        from hostkit.testing.runs import run_toml

        from hostkit_extract_adapters.infer import AdapterSession

        src = toy.build(tmp_path / "src" / "model.onnx", toy.random_adapter(1), base_model="toy@sha256:0123456789abcdef")
        result = run_toml(textwrap.dedent(f"""
            [model]
            type = "OnnxModel"
            path = "{src}"

            [[passes]]
            type = "ExtractAdapters"
            pack_inputs = true

            [output]
            dir = "out"
        """), tmp_path)
        assert result.exit_code == 0, result.output
        handle = result.final_model()
        assert handle.adapter_mode == "inputs" and handle.packed
        assert handle.base_model == "toy@sha256:0123456789abcdef"
        assert handle.path.endswith("01-extractadapters/model.onnx")
        assert handle.adapter_weights.endswith("01-extractadapters/adapter_weights.onnx_adapter")
        assert len(handle.adapter_names) == 4
        assert result.step(0)["notes"]["adapter_modules"] == 4
        session = AdapterSession(handle.path)
        session.load_adapter("own", handle.adapter_weights)
        np.testing.assert_allclose(session.run({"x": toy_input}, adapter="own")[0],
                                   toy.reference(toy_input, toy.random_adapter(1)), rtol=1e-5, atol=1e-5)


def test_hfmodel_input_is_refused_at_validation(tmp_path, run_toml, tiny_llama):
    result = run_toml(textwrap.dedent(f"""
        [model]
        type = "HfModel"
        path = "{tiny_llama}"
        [[passes]]
        type = "ExtractAdapters"
        [output]
        dir = "out"
    """), command="validate")
    assert result.exit_code == 2
    assert "takes OnnxModel, but" in result.output


def test_commands_are_registered_and_help_is_light():
    check = ("import sys, contextlib, io\n"
             "from hostkit.cli import main\n"
             "for c in ('convert-adapters', 'infer'):\n"
             "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             "        try: main([c, '--help'])\n"
             "        except SystemExit: pass\n"
             "    assert '--adapter' in out.getvalue(), out.getvalue()\n"
             "print(','.join(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy', 'transformers', 'safetensors')"
             " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("argv, message", [
    (("infer", "nope.onnx", "--prompt", "hi"), "no such ONNX model"),
    (("infer", "m.onnx"), "--prompt: give at least one prompt"),
    (("infer", "m.onnx", "--prompt", "a", "--use", "x"), "--use: x is not among the adapters"),
    (("infer", "m.onnx", "--prompt", "a", "--adapter", "a=1", "--adapter", "a=2"), "name a given twice"),
])
def test_infer_usage_errors(cli, argv, message):
    code, output = cli(*argv)
    assert code == 2, output
    assert message in output
