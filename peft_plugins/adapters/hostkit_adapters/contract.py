"""The adapter contract: one definition of how a LoRA adapter looks in ONNX.

OnnxConversion writes graphs with it, ExtractAdapters cuts adapter weights out
of those graphs with it, and ``convert-adapters`` turns a PEFT adapter folder
into weights that fit them. All three import this module, so they cannot drift
apart (Olive's issue #2277 is exactly that drift: a converted adapter whose
names do not exist in the extracted model).

The contract (``DESIGN.md``, "Adapter contract (ONNX)"):

* **Names**: ``<module path>.lora_A.weight`` / ``<module path>.lora_B.weight``,
  where the module path is the PEFT path without ``base_model.model.`` and
  without the adapter name: ``model.layers.0.self_attn.q_proj.lora_A.weight``
  (:func:`contract_name`).
* **Layout**: the graph computes ``y = x W + (x A) B`` with A of shape
  ``[in, r]`` and B of shape ``[r, out]`` (PEFT stores them transposed:
  ``lora_A.weight`` is ``[r, in]``, ``lora_B.weight`` is ``[out, r]``).
  The rank is dimension :data:`RANK_AXIS` ``["lora_A"] == 1`` of A and
  ``["lora_B"] == 0`` of B, named :data:`RANK_DIM` when symbolic.
* **Scaling**: the LoRA scaling (alpha/r, or alpha/sqrt(r) for rsLoRA, with
  PEFT's per-module ``rank_pattern`` / ``alpha_pattern``) is folded into B
  (:func:`lora_scaling`, :func:`to_contract_weight`), so adapters of different
  rank and alpha share one graph.
* **Metadata**: adapter files carry the string-to-string dict of
  :func:`adapter_metadata` (base model identity, r, alpha, target modules,
  dtype, producer); :func:`read_metadata` parses it back.

This module is light: it imports neither torch nor numpy nor onnx, so
plugin modules can import it for free. :func:`to_contract_weight` works on
anything with ``.T`` and ``*`` (a numpy array or a torch tensor).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

#: version of this contract, written into every adapter file's metadata
CONTRACT_VERSION = 1

#: the two LoRA weights of a module, in contract names
WEIGHT_KINDS = ("lora_A", "lora_B")

#: which dimension of a contract weight is the rank: A is [in, r], B is [r, out]
RANK_AXIS = {"lora_A": 1, "lora_B": 0}

#: the symbolic dimension name of the rank in graphs with dynamic rank
RANK_DIM = "lora_r"

#: prefix PEFT puts in front of the base model's module paths
PEFT_PREFIX = "base_model.model."

#: metadata keys of adapter files (all values are strings)
META_CONTRACT = "hostkit.contract"
META_BASE_MODEL = "hostkit.base_model"
META_R = "hostkit.r"
META_ALPHA = "hostkit.alpha"
META_USE_RSLORA = "hostkit.use_rslora"
META_RANK_PATTERN = "hostkit.rank_pattern"
META_ALPHA_PATTERN = "hostkit.alpha_pattern"
META_TARGET_MODULES = "hostkit.target_modules"
META_DTYPE = "hostkit.dtype"
META_PRODUCER = "hostkit.producer"
META_LAYOUT = "hostkit.layout"
METADATA_KEYS = (META_CONTRACT, META_BASE_MODEL, META_R, META_ALPHA, META_USE_RSLORA, META_RANK_PATTERN,
                 META_ALPHA_PATTERN, META_TARGET_MODULES, META_DTYPE, META_PRODUCER, META_LAYOUT)

#: the value of :data:`META_LAYOUT`: what a reader must know to use the weights
LAYOUT = "A[in,r] B[r,out]; y = x W + (x A) B; scaling folded into B"

_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$"
)


class ContractError(ValueError):
    """A name, config or file that the adapter contract cannot express."""


# -- names ----------------------------------------------------------------------


def contract_name(peft_key: str, adapter_name: str = "default") -> str:
    """The contract name of a PEFT LoRA weight key.

    Accepts the in-memory form (``base_model.model.<path>.lora_A.default.weight``),
    the saved-file form (``base_model.model.<path>.lora_A.weight``), the base
    model's own form (``<path>.lora_A.default.weight``) and a contract name
    (returned unchanged). Raises :class:`ContractError` for anything else
    (``lora_embedding_A``, ``lora_magnitude_vector``, ``modules_to_save``, an
    other adapter's key).

    >>> contract_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
    'model.layers.0.self_attn.q_proj.lora_A.weight'
    """
    module, kind = _split(peft_key, adapter_name)
    return f"{module}.{kind}.weight"


def is_lora_key(peft_key: str, adapter_name: str = "default") -> bool:
    """Whether :func:`contract_name` accepts ``peft_key``."""
    try:
        _split(peft_key, adapter_name)
    except ContractError:
        return False
    return True


def module_path(name: str) -> str:
    """The module path of a PEFT key, a contract name or a module path.

    ``base_model.model.model.layers.0.mlp.up_proj.lora_B.weight`` -> ``model.layers.0.mlp.up_proj``.
    """
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    match = _LORA_KEY.match(name)
    return match.group("module") if match else name


def weight_kind(name: str) -> str:
    """``"lora_A"`` or ``"lora_B"`` for a contract name (or PEFT key)."""
    match = _LORA_KEY.match(name)
    if not match:
        raise ContractError(f"{name!r} is not a LoRA weight name")
    return match.group("kind")


def rank_axis(name: str) -> int:
    """The rank dimension of the contract weight ``name`` (1 for A, 0 for B)."""
    return RANK_AXIS[weight_kind(name)]


def _split(peft_key: str, adapter_name: str) -> tuple[str, str]:
    key = peft_key[len(PEFT_PREFIX):] if peft_key.startswith(PEFT_PREFIX) else peft_key
    match = _LORA_KEY.match(key)
    if not match:
        raise ContractError(
            f"{peft_key!r} is not a LoRA A/B weight (the contract expresses lora_A/lora_B of linear layers only)"
        )
    adapter = match.group("adapter")
    if adapter is not None and adapter != adapter_name:
        raise ContractError(f"{peft_key!r} belongs to adapter {adapter!r}, not {adapter_name!r}")
    return match.group("module"), match.group("kind")


# -- scaling --------------------------------------------------------------------


def _as_dict(adapter_config: Any) -> dict[str, Any]:
    if isinstance(adapter_config, Mapping):
        return dict(adapter_config)
    if hasattr(adapter_config, "to_dict"):  # a peft LoraConfig
        return adapter_config.to_dict()
    raise TypeError(f"expected an adapter config dict or a peft config, got {type(adapter_config).__name__}")


def _pattern_key(pattern_keys: Any, key_to_match: str) -> str | None:
    """PEFT's ``get_pattern_key`` (peft/utils/other.py): the first pattern matching the end of the key.

    A pattern matches when ``re.match(rf"(.*\\.)?({pattern})$", key)`` does, i.e.
    the pattern (a regex) matches a dotted suffix of the module path.
    """
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key_to_match):
            return pattern
    return None


def module_rank_alpha(adapter_config: Any, module: str) -> tuple[int, float]:
    """``(r, alpha)`` PEFT uses for ``module``, honouring ``rank_pattern`` and ``alpha_pattern``.

    ``module`` is a module path with or without ``base_model.model.`` (a
    contract or PEFT weight name works too).
    """
    cfg = _as_dict(adapter_config)
    path = module_path(module)
    r = int(cfg.get("r", 8))
    alpha = cfg.get("lora_alpha", 8)
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    key = _pattern_key(rank_pattern.keys(), path)
    if key is not None:
        r = int(rank_pattern[key])
    key = _pattern_key(alpha_pattern.keys(), path)
    if key is not None:
        alpha = alpha_pattern[key]
    return r, float(alpha)


def lora_scaling(adapter_config: Any, module_path: str) -> float:
    """The LoRA scaling of one module: ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``.

    Same rule as PEFT's ``LoraLayer.update_layer`` (rsLoRA: Kalajdzievski 2023,
    arXiv:2312.03732), with r and alpha taken per module from ``rank_pattern``
    and ``alpha_pattern`` the way PEFT matches them.
    """
    cfg = _as_dict(adapter_config)
    r, alpha = module_rank_alpha(cfg, module_path)
    if cfg.get("use_rslora"):
        return alpha / math.sqrt(r)
    return alpha / r


def to_contract_weight(peft_weight: Any, kind: str, scaling: float = 1.0) -> Any:
    """A PEFT weight (``lora_A`` ``[r, in]`` or ``lora_B`` ``[out, r]``) in contract layout.

    A becomes ``[in, r]``; B becomes ``[r, out]`` multiplied by ``scaling``.
    Works on numpy arrays and torch tensors (returns a transposed view for A).
    """
    if kind == "lora_A":
        return peft_weight.T
    if kind == "lora_B":
        return peft_weight.T * scaling
    raise ContractError(f"unknown LoRA weight kind {kind!r}")


# -- what the contract cannot express --------------------------------------------


def unsupported_reason(adapter_config: Any) -> str | None:
    """Why the contract cannot express this adapter, or ``None`` when it can.

    The contract holds plain LoRA on linear layers: ``y = x W + (x A) B``.
    Anything that changes that formula, or that trains weights besides A and
    B, is refused with a reason a user can act on.
    """
    cfg = _as_dict(adapter_config)
    peft_type = str(cfg.get("peft_type") or "LORA").upper()
    if peft_type.startswith("PEFTTYPE."):
        peft_type = peft_type.split(".", 1)[1]
    if peft_type != "LORA":
        return f"peft_type {peft_type} is not LoRA; the adapter contract expresses LoRA adapters only"
    if cfg.get("use_dora"):
        return ("DoRA adapters (use_dora = true) are not supported: the magnitude vector rescales "
                "W + BA per output column, which y = x W + (x A) B cannot express; merge the adapter instead")
    if cfg.get("lora_bias"):
        return "lora_bias = true adds a bias to lora_B, which the contract has no place for; merge the adapter instead"
    bias = cfg.get("bias") or "none"
    if bias != "none":
        return f"bias = {bias!r} trains the base model's biases, which are not adapter weights; merge the adapter instead"
    if cfg.get("modules_to_save"):
        return (f"modules_to_save = {cfg['modules_to_save']!r} trains full copies of modules, which are not "
                "LoRA weights; merge the adapter instead")
    if cfg.get("trainable_token_indices"):
        return "trainable_token_indices trains embedding rows, which are not LoRA weights; merge the adapter instead"
    if cfg.get("target_parameters"):
        return "target_parameters (LoRA on bare parameters) is not supported; only LoRA on linear modules is"
    if cfg.get("layer_replication"):
        return "layer_replication changes the base model's layers; merge the adapter instead"
    for key, what in (("use_qalora", "QA-LoRA"), ("alora_invocation_tokens", "activated LoRA (aLoRA)"),
                      ("use_bdlora", "block-diagonal LoRA"), ("arrow_config", "Arrow routing"),
                      ("velora_config", "VeLoRA"), ("monteclora_config", "MonteCLoRA"),
                      ("kasa_config", "KaSA")):
        if cfg.get(key):
            return f"{what} ({key}) changes the LoRA forward pass; the contract expresses plain LoRA only"
    return None


# -- metadata -------------------------------------------------------------------


def producer() -> str:
    """``"hostkit <version>"``: the producer written into adapter files."""
    from hostkit import __version__

    return f"hostkit {__version__}"


def _target_modules(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return sorted(value)


def adapter_metadata(adapter_config: Any, *, base_model: str, dtype: str,
                     target_modules: Any = None) -> dict[str, str]:
    """The string-to-string metadata dict for an adapter file (safetensors, npz, onnx_adapter).

    ``base_model`` is the base's identity (:func:`base_model_identity`),
    ``dtype`` the weights' dtype name (``float32``, ``float16``, ...).
    ``target_modules`` overrides the config's (e.g. the modules really found).
    """
    cfg = _as_dict(adapter_config)
    targets = _target_modules(target_modules if target_modules is not None else cfg.get("target_modules"))
    return {
        META_CONTRACT: str(CONTRACT_VERSION),
        META_BASE_MODEL: base_model,
        META_R: str(int(cfg.get("r", 8))),
        META_ALPHA: _number(cfg.get("lora_alpha", 8)),
        META_USE_RSLORA: "true" if cfg.get("use_rslora") else "false",
        META_RANK_PATTERN: json.dumps(cfg.get("rank_pattern") or {}, sort_keys=True),
        META_ALPHA_PATTERN: json.dumps(cfg.get("alpha_pattern") or {}, sort_keys=True),
        META_TARGET_MODULES: json.dumps(targets),
        META_DTYPE: dtype,
        META_PRODUCER: producer(),
        META_LAYOUT: LAYOUT,
    }


def read_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Parse :func:`adapter_metadata`'s dict back into Python values.

    Returns keys ``contract, base_model, r, alpha, use_rslora, rank_pattern,
    alpha_pattern, target_modules, dtype, producer, layout``; a missing key is
    ``None``. Raises :class:`ContractError` when the file was written for a
    newer contract version.
    """
    def get(key: str) -> str | None:
        return metadata.get(key)

    contract = get(META_CONTRACT)
    if contract is not None and int(contract) > CONTRACT_VERSION:
        raise ContractError(f"adapter written for contract version {contract}; this hostkit reads up to "
                            f"{CONTRACT_VERSION}")
    def loads(key: str) -> Any:
        value = get(key)
        return None if value is None else json.loads(value)

    r = get(META_R)
    alpha = get(META_ALPHA)
    rslora = get(META_USE_RSLORA)
    return {
        "contract": None if contract is None else int(contract),
        "base_model": get(META_BASE_MODEL),
        "r": None if r is None else int(r),
        "alpha": None if alpha is None else float(alpha),
        "use_rslora": None if rslora is None else rslora == "true",
        "rank_pattern": loads(META_RANK_PATTERN),
        "alpha_pattern": loads(META_ALPHA_PATTERN),
        "target_modules": loads(META_TARGET_MODULES),
        "dtype": get(META_DTYPE),
        "producer": get(META_PRODUCER),
        "layout": get(META_LAYOUT),
    }


def _number(value: Any) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


# -- base model identity ------------------------------------------------------------

_SAMPLES_PER_FILE = 16
_SAMPLE_BYTES = 4096


def base_model_identity(path_or_id: str) -> str:
    """A short identity of a base model: ``"<name>@sha256:<16 hex>"`` for a local folder.

    The digest covers ``config.json`` (without ``_name_or_path`` and
    ``transformers_version``) and each weights file's size, safetensors header
    and 16 samples of 4 KiB spread over the file: cheap on a 14 GB model, and
    different for two models with the same shapes but different weights.
    Copies of one model in two folders get the same digest. A hub id (no such
    folder) is its own identity. Compare identities with :func:`same_base_model`.
    """
    path = Path(path_or_id)
    if not path.is_dir():
        return str(path_or_id)
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        for key in ("_name_or_path", "transformers_version"):
            data.pop(key, None)
        digest.update(json.dumps(data, sort_keys=True).encode())
    weights = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")
                     and not p.name.startswith("adapter_"))
    for file in weights:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as fh:
            if file.suffix == ".safetensors" and size >= 8:
                header_len = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(header_len))
                header.pop("__metadata__", None)
                digest.update(json.dumps(header, sort_keys=True).encode())
            for i in range(_SAMPLES_PER_FILE):
                fh.seek(size * i // _SAMPLES_PER_FILE)
                digest.update(fh.read(_SAMPLE_BYTES))
    return f"{path.name}@sha256:{digest.hexdigest()[:16]}"


def same_base_model(a: str | None, b: str | None) -> bool:
    """Whether two identities name the same base model (digests compared when both have one)."""
    if not a or not b:
        return False
    if "@sha256:" in a and "@sha256:" in b:
        return a.split("@sha256:", 1)[1] == b.split("@sha256:", 1)[1]
    return a == b
