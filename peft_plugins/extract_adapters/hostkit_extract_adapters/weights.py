"""Adapter weight files: ``.onnx_adapter``, ``.npz`` and ``.safetensors``, with contract metadata.

Every file this module writes carries the string-to-string metadata of
:func:`hostkit_adapters.contract.adapter_metadata` (base model identity, r,
alpha, target modules, dtype, producer):

* ``.safetensors``: in the file's own ``__metadata__`` header;
* ``.npz``: as a JSON string array named ``__metadata__`` (loadable with
  ``allow_pickle=False``);
* ``.onnx_adapter``: onnxruntime's format holds parameters and two integers
  only, so the metadata goes into a sidecar ``<file>.json``; the file's
  ``adapter_version`` is the contract version and its ``model_version`` a
  31-bit digest of the base model identity, so a file that lost its sidecar
  still refuses a different base.

The suffix is appended to an output path that lacks it, never substituted
(``my.adapter`` becomes ``my.adapter.npz``, not ``my.npz``: Olive #1459).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import attrs
import numpy as np

from hostkit_adapters.contract import CONTRACT_VERSION

SUFFIXES = {"onnx_adapter": ".onnx_adapter", "numpy": ".npz", "safetensors": ".safetensors"}
FORMATS = tuple(SUFFIXES)
NPZ_METADATA = "__metadata__"
SIDECAR_SUFFIX = ".json"


class WeightsFileError(ValueError):
    """A weights file that cannot be read or written as asked."""


@attrs.frozen
class AdapterFile:
    """The contents of an adapter weights file."""

    path: Path
    format: str
    weights: dict[str, np.ndarray]
    metadata: dict[str, str]
    model_version: int | None = None  # .onnx_adapter only

    def signature(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {name: (tuple(a.shape), dtype_name(a.dtype)) for name, a in self.weights.items()}


def dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def format_of(path: str | Path) -> str:
    """The format of a weights file, from its suffix."""
    name = str(path)
    for fmt, suffix in SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise WeightsFileError(f"{path}: unknown adapter weights format (expected one of "
                           f"{', '.join(SUFFIXES.values())})")


def with_suffix(path: str | Path, fmt: str) -> Path:
    """``path`` with the format's suffix appended when missing (dots in names are kept)."""
    suffix = SUFFIXES[fmt]
    path = Path(path)
    return path if path.name.endswith(suffix) else path.with_name(path.name + suffix)


def base_model_digest(base_model: str | None) -> int:
    """A 31-bit number naming the base model, for ``AdapterFormat.set_model_version`` (0 = unknown)."""
    if not base_model:
        return 0
    key = base_model.split("@sha256:", 1)[1] if "@sha256:" in base_model else base_model
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") & 0x7FFFFFFF or 1


def save_weights(weights: Mapping[str, np.ndarray], path: str | Path, fmt: str,
                 metadata: Mapping[str, str]) -> Path:
    """Write ``weights`` in format ``fmt``; returns the path written (suffix appended if missing)."""
    if fmt not in SUFFIXES:
        raise WeightsFileError(f"unknown adapter format {fmt!r} (use one of {', '.join(FORMATS)})")
    path = with_suffix(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(value) for name, value in weights.items()}
    metadata = {str(k): str(v) for k, v in metadata.items()}
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata=metadata)
    elif fmt == "numpy":
        if NPZ_METADATA in arrays:
            raise WeightsFileError(f"a weight may not be called {NPZ_METADATA!r}")
        with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays, **{NPZ_METADATA: np.array(json.dumps(metadata, sort_keys=True))})
    else:
        import onnxruntime as ort

        adapter = ort.AdapterFormat()
        adapter.set_adapter_version(CONTRACT_VERSION)
        from hostkit_adapters.contract import META_BASE_MODEL

        adapter.set_model_version(base_model_digest(metadata.get(META_BASE_MODEL)))
        values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}
        adapter.set_parameters(values)
        adapter.export_adapter(str(path))
        sidecar_of(path).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return path


def sidecar_of(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def load_weights(path: str | Path) -> AdapterFile:
    """Read an adapter weights file (format from its suffix) with its metadata."""
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such adapter weights file")
    model_version = None
    if fmt == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                metadata = dict(fh.metadata() or {})
                weights = {name: fh.get_tensor(name) for name in fh.keys()}
        except Exception as exc:  # noqa: BLE001 - a corrupt file or a dtype numpy lacks (bf16)
            raise WeightsFileError(f"{path}: cannot read as safetensors: {exc}") from None
    elif fmt == "numpy":
        try:
            with np.load(path, allow_pickle=False) as data:
                weights = {name: data[name] for name in data.files if name != NPZ_METADATA}
                metadata = json.loads(str(data[NPZ_METADATA])) if NPZ_METADATA in data.files else {}
        except (OSError, ValueError) as exc:
            raise WeightsFileError(f"{path}: cannot read as .npz: {exc}") from None
    else:
        import onnxruntime as ort

        try:
            adapter = ort.AdapterFormat.read_adapter(str(path))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise WeightsFileError(f"{path}: cannot read as .onnx_adapter: {exc}") from None
        weights = {name: np.array(value.numpy()) for name, value in adapter.get_parameters().items()}
        model_version = adapter.get_model_version()
        sidecar = sidecar_of(path)
        metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        where = sidecar_of(path) if fmt == "onnx_adapter" else f"{path} ({NPZ_METADATA if fmt == 'numpy' else '__metadata__'})"
        raise WeightsFileError(f"{where}: adapter metadata must be a JSON object of strings, got "
                               f"{type(metadata).__name__} {json.dumps(metadata)[:40]}")
    return AdapterFile(path=path, format=fmt, weights=weights, metadata=metadata, model_version=model_version)
