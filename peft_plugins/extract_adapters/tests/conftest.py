"""Fixtures: a small contract graph built with onnx.helper, PEFT adapter folders, and (slow) a tiny
Llama with PEFT adapters exported to ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from hostkit_extract_adapters.testing import (export_peft_llama, make_peft_adapter, own_and_second_adapters,
                                              peft_greedy, peft_logits)

HIDDEN = 16
LAYERS = 2
MODULES = ("q_proj", "v_proj")


def module_names(layers: int = LAYERS, modules: tuple[str, ...] = MODULES) -> list[str]:
    return [f"model.layers.{i}.self_attn.{m}" for i in range(layers) for m in modules]


class ToyModel:
    """A 2-layer graph ``h = tanh(h Wq + (h A) B); h = h + h Wv + (h A) B`` and its numpy twin."""

    def __init__(self, seed: int = 0, dtype: str = "float32"):
        rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.base = {m: (rng.standard_normal((HIDDEN, HIDDEN)) / 4).astype(dtype) for m in module_names()}

    def random_adapter(self, seed: int, ranks: dict[str, int] | int = 4, modules: list[str] | None = None
                       ) -> dict[str, np.ndarray]:
        """Contract weights (A [in, r], B [r, out]) for ``modules``."""
        rng = np.random.default_rng(seed)
        out = {}
        for m in modules or module_names():
            r = ranks if isinstance(ranks, int) else ranks[m]
            out[f"{m}.lora_A.weight"] = (rng.standard_normal((HIDDEN, r)) / 4).astype(self.dtype)
            out[f"{m}.lora_B.weight"] = (rng.standard_normal((r, HIDDEN)) / 4).astype(self.dtype)
        return out

    def reference(self, x: np.ndarray, adapter: dict[str, np.ndarray] | None = None) -> np.ndarray:
        adapter = adapter or {}

        def lin(h: np.ndarray, m: str) -> np.ndarray:
            y = h @ self.base[m]
            if f"{m}.lora_A.weight" in adapter:
                y = y + (h @ adapter[f"{m}.lora_A.weight"]) @ adapter[f"{m}.lora_B.weight"]
            return y

        h = x
        for i in range(LAYERS):
            h = np.tanh(lin(h, f"model.layers.{i}.self_attn.q_proj"))
            h = h + lin(h, f"model.layers.{i}.self_attn.v_proj")
        return h

    def build(self, path: Path, adapter: dict[str, np.ndarray], *, peft_layout: bool = False,
              base_model: str | None = None) -> Path:
        """The graph with ``adapter`` as named initializers (contract layout, or PEFT's behind Transpose)."""
        import onnx
        from onnx import helper, numpy_helper

        elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
        nodes, inits = [], []
        counter = iter(range(10_000))

        def lin(h: str, m: str) -> str:
            t = next(counter)
            w = f"{m}.weight"
            inits.append(numpy_helper.from_array(self.base[m], w))
            nodes.append(helper.make_node("MatMul", [h, w], [f"base{t}"]))
            a_name, b_name = f"{m}.lora_A.weight", f"{m}.lora_B.weight"
            if a_name not in adapter:
                return f"base{t}"
            A, B = adapter[a_name], adapter[b_name]
            if peft_layout:  # torch exporters: PEFT names and [r, in] / [out, r] behind a Transpose
                for name, value, kind in ((a_name, A, "lora_A"), (b_name, B, "lora_B")):
                    peft = f"base_model.model.{m}.{kind}.default.weight"
                    inits.append(numpy_helper.from_array(np.ascontiguousarray(value.T), peft))
                    nodes.append(helper.make_node("Transpose", [peft], [f"{peft}_t{t}"], perm=[1, 0]))
                a_in, b_in = f"base_model.model.{m}.lora_A.default.weight_t{t}", f"base_model.model.{m}.lora_B.default.weight_t{t}"
            else:
                inits.extend([numpy_helper.from_array(A, a_name), numpy_helper.from_array(B, b_name)])
                a_in, b_in = a_name, b_name
            nodes.append(helper.make_node("MatMul", [h, a_in], [f"xa{t}"]))
            nodes.append(helper.make_node("MatMul", [f"xa{t}", b_in], [f"xab{t}"]))
            nodes.append(helper.make_node("Add", [f"base{t}", f"xab{t}"], [f"y{t}"]))
            return f"y{t}"

        h = "x"
        for i in range(LAYERS):
            q = lin(h, f"model.layers.{i}.self_attn.q_proj")
            nodes.append(helper.make_node("Tanh", [q], [f"tanh{i}"]))
            v = lin(f"tanh{i}", f"model.layers.{i}.self_attn.v_proj")
            nodes.append(helper.make_node("Add", [f"tanh{i}", v], [f"h{i}"]))
            h = f"h{i}"
        nodes.append(helper.make_node("Identity", [h], ["y"]))
        graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", elem, ["batch", HIDDEN])],
                                  [helper.make_tensor_value_info("y", elem, ["batch", HIDDEN])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        if base_model:
            entry = model.metadata_props.add()
            entry.key, entry.value = "hostkit.base_model", base_model
        onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
        return path


@pytest.fixture
def toy() -> ToyModel:
    return ToyModel()


@pytest.fixture
def toy_input() -> np.ndarray:
    return np.random.default_rng(42).standard_normal((3, HIDDEN)).astype(np.float32)


def write_peft_adapter(path: Path, contract_weights: dict[str, np.ndarray], config: dict[str, Any]) -> Path:
    """A PEFT adapter folder whose weights, scaled as PEFT scales them, equal ``contract_weights``.

    The contract folds the scaling into B, so B is divided by the scaling here.
    """
    from safetensors.numpy import save_file

    from hostkit_adapters.contract import lora_scaling, module_path, weight_kind

    tensors = {}
    for name, value in contract_weights.items():
        module = module_path(name)
        kind = weight_kind(name)
        peft = value.T if kind == "lora_A" else value.T / lora_scaling(config, module)
        tensors[f"base_model.model.{module}.{kind}.weight"] = np.ascontiguousarray(peft.astype(np.float32))
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    full = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": list(MODULES), "bias": "none",
            "use_dora": False, "use_rslora": False, "rank_pattern": {}, "alpha_pattern": {},
            "base_model_name_or_path": "toy-base", **config}
    (path / "adapter_config.json").write_text(json.dumps(full))
    return path


@pytest.fixture
def peft_adapter_dir() -> Callable[..., Path]:
    return write_peft_adapter


def hostkit_cli(*argv: str) -> tuple[int, str]:
    """Run ``hostkit ARGV`` in-process with every installed plugin; exit code and all output."""
    import contextlib
    import io

    from hostkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv), stream=err)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue() + err.getvalue()


@pytest.fixture
def cli() -> Callable[..., tuple[int, str]]:
    return hostkit_cli


# -- a tiny Llama with PEFT adapters (slow tests) -------------------------------------------


class LlamaCase:
    """The tiny Llama, two PEFT adapters made separately, torch references, and the exported graph."""

    def __init__(self, root: Path, base_dir: Path):
        self.root = root
        self.base_dir = base_dir
        self.own_dir, self.second_dir = own_and_second_adapters(base_dir, root)
        # a lower rank than the own adapter's: fits models whose rank is fixed (zero-padded)
        self.small_dir = make_peft_adapter(base_dir, root / "adapter-small", seed=3, r=2, lora_alpha=6,
                                           alpha_pattern={"v_proj": 3})
        rng = np.random.default_rng(0)
        self.input_ids = rng.integers(3, 400, size=(2, 7)).astype(np.int64)
        self.expected = {name: peft_logits(base_dir, adapter, self.input_ids)
                         for name, adapter in (("base", None), ("own", self.own_dir), ("second", self.second_dir),
                                                 ("small", self.small_dir))}
        self.onnx_path = export_peft_llama(base_dir, self.own_dir, root / "export" / "model.onnx")

    def feed(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": np.ones_like(self.input_ids)}


@pytest.fixture(scope="session")
def llama_case(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> LlamaCase:
    return LlamaCase(tmp_path_factory.mktemp("llama-case"), tiny_llama)


@pytest.fixture(scope="session")
def llama_tools() -> Any:
    import types

    return types.SimpleNamespace(make_peft_adapter=make_peft_adapter, peft_logits=peft_logits,
                                 peft_greedy=peft_greedy, export_peft_llama=export_peft_llama)
