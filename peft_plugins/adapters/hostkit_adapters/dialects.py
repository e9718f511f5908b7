"""The two graph dialects that carry LoRA weights, and the mapping between them.

* ``hostkit``: OnnxConversion's graphs (:mod:`hostkit_adapters.contract`):
  ``model.layers.0.self_attn.q_proj.lora_A.weight``, the PEFT module path.
* ``genai``: onnxruntime-genai's model builder (the ModelBuilder pass):
  ``model.layers.0.attn.q_proj.lora_A.MatMul.weight``. Its attention block is
  ``attn`` (PEFT's ``self_attn``), every weight ends in ``.MatMul.weight``, and a
  fused PEFT projection (``qkv_proj``, ``gate_up_proj``, as in Phi-3) becomes
  separate ``q_proj``/``k_proj``/``v_proj`` (``gate_proj``/``up_proj``) MatMuls that
  share A and take their columns of B.

Both lay weights out alike: A ``[in, r]``, B ``[r, out]`` with the LoRA scaling
folded into B (the builder multiplies ``lora_B`` by peft's ``scaling`` before
writing it), so mapping is renaming plus, for fused modules, splitting B.

Like :mod:`hostkit_adapters.contract`, this module is light (no numpy at import;
arrays are only sliced) and knows nothing of files. ExtractAdapters, ``convert-adapters``
(through ``ModelSignature.fit``) and ModelBuilder all map names through it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from hostkit_adapters.contract import ContractError, is_lora_key, module_path, weight_kind

HOSTKIT = "hostkit"
GENAI = "genai"
DIALECTS = (HOSTKIT, GENAI)

_GENAI_NAME = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.MatMul\.weight$")
#: PEFT block name -> the builder's
_BLOCKS = {"self_attn": "attn", "mlp": "mlp"}
#: fused PEFT projections and the builder modules they are split into, in column order of B
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_LAYER_MODULE = re.compile(r"^(?P<prefix>(?:.+\.)?layers\.\d+)\.(?P<block>[^.]+)\.(?P<proj>[^.]+)$")


def is_genai_name(name: str) -> bool:
    """``model.layers.0.attn.q_proj.lora_A.MatMul.weight`` and the like."""
    return bool(_GENAI_NAME.match(name))


def dialect_of_name(name: str) -> str | None:
    if is_genai_name(name):
        return GENAI
    if is_lora_key(name):
        return HOSTKIT
    return None


def dialect_of(names: Iterable[str]) -> str | None:
    """The dialect of a set of LoRA weight names (None: none of either; ContractError: both)."""
    found = {d for d in map(dialect_of_name, names) if d}
    if len(found) > 1:
        raise ContractError("the LoRA weights mix hostkit's names (…self_attn.q_proj.lora_A.weight) and "
                            "onnxruntime-genai's (…attn.q_proj.lora_A.MatMul.weight)")
    return found.pop() if found else None


def genai_parts(name: str) -> tuple[str, str]:
    """(module, kind) of a genai weight name."""
    match = _GENAI_NAME.match(name)
    if not match:
        raise ContractError(f"{name!r} is not an onnxruntime-genai LoRA weight name")
    return match.group("module"), match.group("kind")


def genai_modules(peft_module: str) -> tuple[str, ...]:
    """The builder module(s) a PEFT module path maps to (several for a fused projection).

    ``model.layers.3.self_attn.q_proj`` -> ``("model.layers.3.attn.q_proj",)``;
    ``model.layers.0.self_attn.qkv_proj`` -> q/k/v. Raises :class:`ContractError`
    for modules the builder has no LoRA for (``lm_head``, embeddings, ...).
    """
    match = _LAYER_MODULE.match(peft_module)
    if not match or match.group("block") not in _BLOCKS:
        raise ContractError(f"{peft_module}: onnxruntime-genai's builder takes LoRA on the attention and MLP "
                            "projections of the decoder layers only")
    prefix, block, proj = match.group("prefix"), _BLOCKS[match.group("block")], match.group("proj")
    return tuple(f"{prefix}.{block}.{p}" for p in FUSED.get(proj, (proj,)))


def peft_module(genai_module: str) -> str:
    """The PEFT module path of a builder module (``attn`` -> ``self_attn``); fused origins are not recovered."""
    match = _LAYER_MODULE.match(genai_module)
    if not match:
        raise ContractError(f"{genai_module}: not a decoder-layer module")
    block = {v: k for k, v in _BLOCKS.items()}.get(match.group("block"), match.group("block"))
    return f"{match.group('prefix')}.{block}.{match.group('proj')}"


def genai_name(module: str, kind: str) -> str:
    return f"{module}.{kind}.MatMul.weight"


def to_genai(weights: Mapping[str, Any], out_features: Mapping[str, int] | None = None
             ) -> tuple[dict[str, Any], list[str]]:
    """Contract-named weights (A ``[in, r]``, B ``[r, out]``, scaled) renamed into the builder's names.

    A fused module's A is shared by its parts and B is split by columns, using
    ``out_features`` (builder module -> output size, from the model's B shapes);
    returns the weights and the problems (a module the builder has no LoRA for,
    a fused B whose columns do not add up).
    """
    out: dict[str, Any] = {}
    problems: list[str] = []
    by_module: dict[str, dict[str, Any]] = {}
    for name, value in weights.items():
        by_module.setdefault(module_path(name), {})[weight_kind(name)] = value
    for module, pair in sorted(by_module.items()):
        try:
            targets = genai_modules(module)
        except ContractError as exc:
            problems.append(str(exc))
            continue
        if len(targets) == 1:
            for kind, value in pair.items():
                out[genai_name(targets[0], kind)] = value
            continue
        if "lora_A" in pair:
            for target in targets:
                out[genai_name(target, "lora_A")] = pair["lora_A"]
        if "lora_B" in pair:
            b = pair["lora_B"]
            sizes = [None if out_features is None else out_features.get(t) for t in targets]
            if any(s is None for s in sizes):
                if b.shape[1] % len(targets):
                    problems.append(f"{module}: a fused B of {b.shape[1]} columns, the model's split unknown")
                    continue
                sizes = [b.shape[1] // len(targets)] * len(targets)
            if sum(sizes) != b.shape[1]:
                problems.append(f"{module}: fused B has {b.shape[1]} columns, the model's "
                                f"{'/'.join(t.rsplit('.', 1)[1] for t in targets)} take {sum(sizes)} ({sizes})")
                continue
            start = 0
            for target, size in zip(targets, sizes):
                out[genai_name(target, "lora_B")] = b[:, start:start + size]
                start += size
    return out, problems


def hostkit_name_of(genai_weight: str) -> str:
    """The hostkit contract name of a builder weight (``attn`` -> ``self_attn``, no ``.MatMul``)."""
    module, kind = genai_parts(genai_weight)
    return f"{peft_module(module)}.{kind}.weight"


def other_dialect_problem(names: Iterable[str], model_dialect: str) -> str | None:
    """One problem line when ``names`` are LoRA weights named in the other dialect than the model's."""
    names = sorted(names)
    other = [n for n in names if dialect_of_name(n) not in (None, model_dialect)]
    if not other:
        return None
    if model_dialect == GENAI:
        example = genai_name(genai_modules(module_path(other[0]))[0], weight_kind(other[0])) \
            if _safe_modules(other[0]) else "model.layers.N.attn.q_proj.lora_A.MatMul.weight"
        return (f"{len(other)} weights are named in hostkit's dialect ({other[0]}), the model is an "
                f"onnxruntime-genai graph ({example}): convert the PEFT adapter with convert-adapters --model")
    return (f"{len(other)} weights are named in onnxruntime-genai's dialect ({other[0]}), the model is a hostkit "
            f"graph ({hostkit_name_of(other[0])}): convert the PEFT adapter with convert-adapters --model")


def _safe_modules(name: str) -> bool:
    try:
        genai_modules(module_path(name))
    except ContractError:
        return False
    return True
