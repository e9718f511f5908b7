"""hostkit's conformance suite for MergeAdapterWeights."""

from __future__ import annotations

import textwrap
from pathlib import Path

from hostkit.testing.conformance import PassConformance


class TestMergeAdapterWeightsConformance(PassConformance):
    plugin_name = "merge_adapters"
    pass_type = "MergeAdapterWeights"
    valid_options = {"torch_dtype": "float16"}
    invalid_options = [({"torch_dtype": "int8"}, "torch_dtype"), ({"torch_dtyp": "float32"}, "torch_dtyp")]
    run_file = """
    [model]
    type = "HfModel"
    path = "{tiny_llama}"
    adapter_path = "{adapter}"
    [[passes]]
    type = "MergeAdapterWeights"
    [output]
    dir = "out"
    """

    def test_runs_on_tiny_model(self, tiny_llama: Path, tiny_adapter: Path, tmp_path: Path) -> None:
        # the conformance run needs an adapter: substitute ours, then run the shared check
        original = type(self).run_file
        try:
            type(self).run_file = textwrap.dedent(original).replace("{adapter}", str(tiny_adapter))
            super().test_runs_on_tiny_model(tiny_llama, tmp_path)
        finally:
            type(self).run_file = original
