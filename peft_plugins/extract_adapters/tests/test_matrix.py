"""The whole deployment matrix on the tiny Llama, each cell against torch PEFT.

OnnxConversion exporter {torchscript, dynamo} x ExtractAdapters make_inputs {true, false} x
pack_inputs {false, true} x {no adapter, the model's own adapter, a second adapter converted
with ``convert-adapters --model``}. Each graph is exported once per exporter and extracted once
per cell; the cells are parametrized.

The own adapter has r = 8 on purpose: the tiny Llama's rotary half-dimension is 8 too, and the
exporters record ``value_info`` shapes ``[batch, seq, 8]`` for ``x A``. Left in the extracted
graph, onnxruntime's memory planner trusts them and hands ``x A`` (``[batch, seq, 0]`` with no
adapter) and rotary tensors each other's buffers: "Shape mismatch attempting to re-use buffer
{1,7,0} != {1,7,8}", a warning on some CPUs and a failed Mul on others (issue 9).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hostkit_extract_adapters.extract import extract_adapters, rank_carrying_values
from hostkit_extract_adapters.infer import AdapterSession
from hostkit_extract_adapters.testing import make_peft_adapter

pytestmark = pytest.mark.slow
#: max |ort - torch| over unmasked positions, relative to max |torch logits| there (fp32 kernels differ ~1e-6)
REL_TOL = 2e-5
EXPORTERS = ("torchscript", "dynamo")
ADAPTERS = ("none", "own", "second")


class MatrixCase:
    """Adapters, torch references on a right-padded batch, and one OnnxConversion export per exporter."""

    def __init__(self, root: Path, base_dir: Path):
        from hostkit.testing.tiny import make_lora_adapter

        self.root = root
        self.base_dir = base_dir
        self.own_dir = make_lora_adapter(base_dir, root / "own", seed=1, r=8, lora_alpha=16)
        # made separately: other rank, rsLoRA, per-module rank and alpha; ranks <= 8 so it also fits
        # the fixed rank of make_inputs = false (zero-padded, exact)
        self.second_dir = make_peft_adapter(base_dir, root / "second", seed=2, r=4, lora_alpha=8, use_rslora=True,
                                            target_modules=["q_proj", "v_proj", "up_proj"],
                                            rank_pattern={"layers.1.self_attn.v_proj": 2}, alpha_pattern={"q_proj": 4})
        rng = np.random.default_rng(0)
        self.input_ids = rng.integers(3, 400, size=(2, 7)).astype(np.int64)
        self.attention_mask = np.ones_like(self.input_ids)
        self.attention_mask[1, 5:] = 0  # right padding
        self.position_ids = np.clip(self.attention_mask.cumsum(-1) - 1, 0, None).astype(np.int64)
        self.expected = {"none": self._torch(None), "own": self._torch(self.own_dir),
                         "second": self._torch(self.second_dir)}
        self._exports: dict[str, Path] = {}
        self._cells: dict[tuple[str, bool, bool], tuple[Path, Path, Path]] = {}

    def _torch(self, adapter: Path | None) -> np.ndarray:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        with torch.no_grad():
            return model.eval()(input_ids=torch.from_numpy(self.input_ids),
                                attention_mask=torch.from_numpy(self.attention_mask),
                                position_ids=torch.from_numpy(self.position_ids)).logits.numpy()

    def feed(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def export(self, exporter: str) -> Path:
        if exporter not in self._exports:
            from hostkit import HfModel
            from hostkit_onnx_export.config import OnnxConversionConfig
            from hostkit_onnx_export.export import export_onnx

            handle = HfModel(path=str(self.base_dir), adapter_path=str(self.own_dir), task="text-generation")
            out = export_onnx(handle, OnnxConversionConfig(exporter=exporter), self.root / f"export-{exporter}")
            self._exports[exporter] = Path(out.path)
        return self._exports[exporter]

    def cell(self, exporter: str, make_inputs: bool, pack_inputs: bool, cli) -> tuple[Path, Path, Path]:
        """(extracted model, its own adapter file, the converted second adapter) of one cell."""
        key = (exporter, make_inputs, pack_inputs)
        if key not in self._cells:
            out = self.root / f"{exporter}-inputs{int(make_inputs)}-packed{int(pack_inputs)}"
            result = extract_adapters(self.export(exporter), out, make_inputs=make_inputs, pack_inputs=pack_inputs)
            second = out / "second.onnx_adapter"
            code, output = cli("convert-adapters", "--adapter-path", str(self.second_dir), "--output-path",
                               str(second), "--model", str(result.model_path))
            assert code == 0, output
            self._cells[key] = (result.model_path, result.weights_path, second)
        return self._cells[key]

    def relative_delta(self, logits: np.ndarray, adapter: str) -> float:
        mask = self.attention_mask.astype(bool)
        expected = self.expected[adapter]
        return float(np.abs(logits - expected)[mask].max() / np.abs(expected)[mask].max())


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> MatrixCase:
    return MatrixCase(tmp_path_factory.mktemp("matrix"), tiny_llama)


@pytest.mark.parametrize("pack_inputs", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("make_inputs", [True, False], ids=["inputs", "external"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_cell_matches_torch_peft(matrix, cli, exporter, make_inputs, pack_inputs):
    model_path, own, second = matrix.cell(exporter, make_inputs, pack_inputs, cli)
    session = AdapterSession(model_path)
    session.load_adapter("own", own)
    session.load_adapter("second", second)
    deltas: dict[str, float] = {}
    for adapter in ("none", "own", "second", "none", "own"):  # switching back and forth, per call
        logits = session.run(matrix.feed(), adapter=None if adapter == "none" else adapter,
                             output_names=["logits"])[0]
        deltas[adapter] = max(deltas.get(adapter, 0.0), matrix.relative_delta(logits, adapter))
    cell = f"{exporter} make_inputs={make_inputs} pack_inputs={pack_inputs}"
    print(f"MATRIX {cell}: " + json.dumps({k: float(f"{v:.3g}") for k, v in deltas.items()}))
    assert all(delta <= REL_TOL for delta in deltas.values()), f"{cell}: {deltas}"
    # the adapters really change the output, so the comparisons are not vacuous
    mask = matrix.attention_mask.astype(bool)
    for a, b in (("none", "own"), ("own", "second"), ("none", "second")):
        assert np.abs(matrix.expected[a] - matrix.expected[b])[mask].max() > 1e-2, (a, b)
    if make_inputs:
        assert session._sessions == {}  # one onnxruntime session served all three


@pytest.mark.parametrize("pack_inputs", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_no_adapter_run_has_no_stale_rank_shapes(matrix, cli, capfd, exporter, pack_inputs):
    """Plain onnxruntime, default logging, no adapter fed: no buffer-reuse shape mismatch, and no
    value_info left with a fixed shape on a value that carries the (now symbolic) rank."""
    import onnx
    import onnxruntime as ort

    model_path, _, _ = matrix.cell(exporter, True, pack_inputs, cli)
    model = onnx.load(str(model_path))
    adapter_inputs = {i.name for i in model.graph.input} - set(matrix.feed())
    members = {n.output[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in adapter_inputs}
    carrying = rank_carrying_values(model.graph, adapter_inputs | members)
    assert len(carrying) > len(adapter_inputs)
    stale = [v.name for v in model.graph.value_info if v.name in carrying]
    assert stale == []
    capfd.readouterr()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for length in (7, 3, 1):  # several shapes through the same session, as generation does
        feed = {k: v[:, :length] for k, v in matrix.feed().items()}
        logits = session.run(["logits"], feed)[0]
        assert logits.shape == (2, length, matrix.expected["none"].shape[-1])
    err = capfd.readouterr().err
    assert "Shape mismatch" not in err, err[-2000:]
    assert matrix.relative_delta(session.run(["logits"], matrix.feed())[0], "none") <= REL_TOL
