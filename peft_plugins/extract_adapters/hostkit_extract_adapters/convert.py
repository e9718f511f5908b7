"""``hostkit convert-adapters``: a PEFT adapter folder to weights that fit an extracted model.

A PEFT LoRA checkpoint stores ``lora_A.weight`` ``[r, in]`` and
``lora_B.weight`` ``[out, r]`` and applies ``scaling`` at run time. The
contract wants ``A [in, r]`` and ``B [r, out]`` with the scaling folded into
B, per module: ``alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA), with r and
alpha taken from ``rank_pattern`` / ``alpha_pattern`` where they match (Olive
uses one global scaling and gets patterned adapters wrong). Adapters the
contract cannot express (DoRA, LoRA biases, ``modules_to_save``, ...) are
refused with the reason. Optional block-wise int4 quantization follows
Olive's layout (``onnxruntime``'s ``quantize_matmul_4bits``: ``.quant.weight``
``[cols, k_blocks, block/2]`` uint8, ``.quant.scale``, and
``.quant.zero_point`` in asymmetric mode), for graphs whose adapter MatMuls
are ``MatMulNBits``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from hostkit_adapters.contract import (META_DTYPE, ContractError, adapter_metadata, base_model_identity,
                                      contract_name, is_lora_key, lora_scaling, module_path, module_rank_alpha,
                                      to_contract_weight, unsupported_reason, weight_kind)

META_QUANTIZATION = "hostkit.quantization"
DTYPES = ("float32", "float16")
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
INT4_MODES = ("symmetric", "asymmetric")


@attrs.frozen
class ConvertedAdapter:
    weights: dict[str, np.ndarray]
    metadata: dict[str, str]
    ranks: dict[str, int]
    config: dict[str, Any]


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise ContractError(f"{adapter_dir}: no adapter_config.json (is it a PEFT adapter folder?)")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ContractError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ContractError(f"{path}: expected a JSON object (a PEFT adapter config), got {type(config).__name__}")
    problems = [f"{key} is missing" if key not in config else f"{key} must be a positive number, got {json.dumps(config[key])}"
                for key in ("r", "lora_alpha")
                if key not in config or isinstance(config[key], bool) or not isinstance(config[key], (int, float))
                or not config[key] > 0]
    if problems and str(config.get("peft_type", "LORA")).upper() in ("LORA", "PEFTTYPE.LORA"):
        raise ContractError(f"{path}: {'; '.join(problems)} (the scaling lora_alpha / r is folded into B)")
    return config


def read_adapter_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    """The adapter's tensors as float32 numpy arrays (torch only for bf16 or a .bin file)."""
    safetensors_file = adapter_dir / "adapter_model.safetensors"
    bin_file = adapter_dir / "adapter_model.bin"
    if safetensors_file.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(safetensors_file), framework="numpy") as fh:
                return {k: fh.get_tensor(k).astype(np.float32) for k in fh.keys()}
        except (TypeError, ValueError):  # bfloat16 has no numpy dtype: torch reads it below
            pass
        except Exception as exc:  # noqa: BLE001 - SafetensorError: a truncated or corrupt file is the user's
            raise ContractError(f"{safetensors_file}: cannot read as safetensors: {exc}") from None
        import torch
        from safetensors.torch import load_file

        return {k: v.to(torch.float32).numpy() for k, v in load_file(str(safetensors_file)).items()}
    if bin_file.is_file():
        import torch

        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
        return {k: v.to(torch.float32).numpy() for k, v in state.items()}
    raise ContractError(f"{adapter_dir}: no adapter_model.safetensors or adapter_model.bin")


def resolve_base_model(config: dict[str, Any], base_model: str | None) -> str:
    """The base model identity: of ``base_model`` (a folder or identity) or of the config's base path."""
    candidate = base_model or config.get("base_model_name_or_path") or ""
    return base_model_identity(candidate) if candidate else ""


def convert_peft_adapter(adapter_dir: str | Path, *, dtype: str = "float32", base_model: str | None = None,
                         ) -> ConvertedAdapter:
    """Contract-named, contract-laid-out, scaled weights of a PEFT LoRA adapter folder."""
    adapter_dir = Path(adapter_dir)
    if dtype not in DTYPES:
        raise ContractError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    config = read_adapter_config(adapter_dir)
    reason = unsupported_reason(config)
    if reason:
        raise ContractError(f"{adapter_dir}: {reason}")
    tensors = read_adapter_tensors(adapter_dir)
    others = sorted(k for k in tensors if not is_lora_key(k))
    if others:
        raise ContractError(f"{adapter_dir}: tensors the contract cannot express (only lora_A/lora_B of linear "
                            f"layers): {', '.join(others[:8])}{' ...' if len(others) > 8 else ''}")
    weights: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    problems = []
    for key, value in sorted(tensors.items()):
        name = contract_name(key)
        kind = weight_kind(name)
        module = module_path(name)
        expected_r, _ = module_rank_alpha(config, module)
        actual_r = value.shape[0] if kind == "lora_A" else value.shape[1]
        if actual_r != expected_r:
            problems.append(f"{module}: {kind} has rank {actual_r}, adapter_config.json says r = {expected_r} "
                            "(rank_pattern?)")
        ranks[module] = actual_r
        scaling = lora_scaling(config, module) if kind == "lora_B" else 1.0
        weights[name] = np.ascontiguousarray(to_contract_weight(value, kind, scaling)).astype(dtype)
    if problems:
        raise ContractError(f"{adapter_dir}: the weights disagree with adapter_config.json:\n"
                            + "\n".join(f"  {p}" for p in problems))
    targets = sorted({module_path(n).rsplit(".", 1)[-1] for n in weights})
    metadata = adapter_metadata(config, base_model=resolve_base_model(config, base_model), dtype=dtype,
                                target_modules=targets)
    return ConvertedAdapter(weights=weights, metadata=metadata, ranks=ranks, config=config)


def quantize_int4(converted: ConvertedAdapter, *, block_size: int = 32, mode: str = "symmetric",
                  dtype: str = "float32") -> ConvertedAdapter:
    """Block-wise int4 weights in Olive's layout; ``dtype`` is the scales' dtype."""
    from onnxruntime.quantization.matmul_nbits_quantizer import quantize_matmul_4bits

    if block_size not in INT4_BLOCK_SIZES:
        raise ContractError(f"int4 block size {block_size}: use one of {', '.join(map(str, INT4_BLOCK_SIZES))}")
    if mode not in INT4_MODES:
        raise ContractError(f"int4 quantization mode {mode!r}: use symmetric or asymmetric")
    symmetric = mode == "symmetric"
    out: dict[str, np.ndarray] = {}
    for name, weight in converted.weights.items():
        weight = np.ascontiguousarray(weight.astype(dtype))
        rows, cols = weight.shape  # MatMul B layout: K rows (input dim), N columns
        k_blocks = (rows + block_size - 1) // block_size
        padded = np.pad(weight, ((0, k_blocks * block_size - rows), (0, 0)))
        packed = np.zeros((cols, k_blocks, block_size // 2), dtype=np.uint8)
        scales = np.zeros((cols, k_blocks), dtype=weight.dtype)
        zero_point = np.zeros((cols, (k_blocks + 1) // 2), dtype=np.uint8)
        quantize_matmul_4bits(packed, padded, scales, zero_point, block_size, cols, rows, symmetric)
        stem = name[: -len(".weight")]
        out[f"{stem}.quant.weight"] = packed
        out[f"{stem}.quant.scale"] = scales.reshape(-1)
        if not symmetric:
            out[f"{stem}.quant.zero_point"] = zero_point.reshape(-1)
    metadata = dict(converted.metadata)
    metadata[META_DTYPE] = "int4"
    metadata[META_QUANTIZATION] = json.dumps({"bits": 4, "block_size": block_size, "mode": mode,
                                              "scale_dtype": dtype})
    return attrs.evolve(converted, weights=out, metadata=metadata)
