"""What adapter weights a model takes, and whether an adapter fits it.

:class:`ModelSignature` lists the adapter slots of an extracted model (graph
inputs, or external initializers): name, dtype, shape with the rank dimension
fixed or symbolic, and for packed slots the contract names of the layers
packed into them. :meth:`ModelSignature.fit` checks an adapter against it
*before* any run and either returns arrays keyed by the model's slot names
(packing unpacked weights, zero-padding a lower rank, which is exact) or raises
:class:`AdapterMismatch` listing every problem at once. onnxruntime itself
fails only at run time ("Invalid input name"), and silently takes the first
of two active adapters that share names (Olive #2277 is this going wrong).

ExtractAdapters writes the signature into the model's ``metadata_props``
under :data:`SIGNATURE_KEY`, so readers need not parse the graph; for other
graphs it is derived from the graph inputs.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Mapping

import attrs
import numpy as np

from hostkit_adapters.contract import (CONTRACT_VERSION, META_BASE_MODEL, RANK_AXIS, is_lora_key,
                                      module_path, same_base_model, weight_kind)

SIGNATURE_KEY = "hostkit.adapters"
PACKED_SUFFIX = ".packed"
#: where external adapter initializers "live": a file that never exists (supply them at session creation)
EXTERNAL_LOCATION = "adapter-weights-supplied-at-session-creation.bin"


class AdapterMismatch(ValueError):
    """An adapter that does not fit a model; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], *, adapter: str = "adapter", model: str = "model"):
        self.problems = list(problems)
        head = f"{adapter} does not fit {model}: {len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


@attrs.frozen
class Slot:
    """One adapter input (or external initializer) of a model."""

    name: str
    shape: tuple[Any, ...]  # ints, or a str for a symbolic dimension
    dtype: str
    rank_axis: int
    members: tuple[str, ...] = ()  # packed: contract names, in pack order

    @property
    def packed(self) -> bool:
        return bool(self.members)

    @property
    def dynamic_rank(self) -> bool:
        return isinstance(self.shape[self.rank_axis], str)

    def member_shape(self) -> tuple[Any, ...]:
        return self.shape[1:] if self.packed else self.shape

    def empty(self) -> np.ndarray:
        """The value meaning "no adapter": rank 0 when the rank is symbolic, else zeros."""
        shape = [0 if (i == self.rank_axis and isinstance(d, str)) else d for i, d in enumerate(self.shape)]
        if any(isinstance(d, str) for d in shape):
            raise ValueError(f"{self.name}: cannot build an empty value for shape {self.shape}")
        return np.zeros(shape, dtype=self.dtype)

    def as_json(self) -> dict[str, Any]:
        data = {"shape": list(self.shape), "dtype": self.dtype, "rank_axis": self.rank_axis}
        if self.members:
            data["members"] = list(self.members)
        return data


def _fmt_shape(shape: Any) -> str:
    # per-module rank symbols (lora_r.<module>) read as lora_r: the weight's name says the module
    return "[" + ", ".join("lora_r" if str(d).startswith("lora_r.") else str(d) for d in shape) + "]"


@attrs.frozen
class ModelSignature:
    """The adapter slots of an extracted model and how they reach the graph."""

    slots: dict[str, Slot]
    mode: str = "inputs"  # inputs | external
    optional: bool = True  # inputs mode: slots have zero-size (or zero) defaults
    base_model: str | None = None
    source: str = "model"

    @property
    def packed(self) -> bool:
        return any(s.packed for s in self.slots.values())

    @property
    def dynamic_rank(self) -> bool:
        return any(s.dynamic_rank for s in self.slots.values())

    @property
    def dialect(self) -> str:
        """``hostkit`` (OnnxConversion graphs) or ``genai`` (ModelBuilder graphs): how the weights are named."""
        from hostkit_adapters.dialects import HOSTKIT, dialect_of

        return dialect_of(self.contract_names()) or HOSTKIT

    def in_model_dialect(self, weights: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
        """Adapter weights renamed into the model's dialect, and the problems of the mapping.

        Both dialects lay weights out alike (A ``[in, r]``, B ``[r, out]``, scaling in B),
        so an adapter converted for one kind of graph fits the other once renamed. For a
        ModelBuilder graph: ``self_attn`` -> ``attn``, ``.MatMul.weight``, a fused
        ``qkv_proj``/``gate_up_proj`` split by the model's own B widths; a module the
        builder has no LoRA for (``lm_head``, embeddings) is a problem. Weights already
        named for the model, and packed slot names, pass unchanged.
        """
        from hostkit_adapters.contract import ContractError

        from hostkit_adapters.dialects import GENAI, dialect_of_name, hostkit_name_of, to_genai

        dialect = self.dialect
        other = {n: a for n, a in weights.items() if n not in self.slots and dialect_of_name(n) not in (None, dialect)}
        if not other:
            return dict(weights), []
        out = {n: a for n, a in weights.items() if n not in other}
        if dialect == GENAI:
            out_features = {}
            for slot in self.slots.values():
                for name in slot.members or (slot.name,):
                    if weight_kind(name) == "lora_B":
                        out_features[module_path(name)] = slot.member_shape()[1]
            mapped, problems = to_genai(other, out_features)
        else:
            mapped, problems = {}, []
            for name, array in other.items():
                try:
                    mapped[hostkit_name_of(name)] = array
                except ContractError as exc:
                    problems.append(str(exc))
        clash = sorted(set(mapped) & set(out))
        if clash:
            problems.append(f"{len(clash)} weights given in both dialects: {_name_list(clash, limit=4)}")
        out.update(mapped)
        return out, problems

    def contract_names(self) -> list[str]:
        """Every contract name the model takes (packed slots expanded into their members)."""
        names: list[str] = []
        for slot in self.slots.values():
            names.extend(slot.members or (slot.name,))
        return names

    def as_json(self) -> dict[str, Any]:
        return {"contract": CONTRACT_VERSION, "mode": self.mode, "optional": self.optional,
                "base_model": self.base_model, "slots": {n: s.as_json() for n, s in self.slots.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "model") -> "ModelSignature":
        slots = {name: Slot(name=name, shape=tuple(d["shape"]), dtype=d["dtype"], rank_axis=int(d["rank_axis"]),
                            members=tuple(d.get("members", ()))) for name, d in data["slots"].items()}
        return cls(slots=slots, mode=data.get("mode", "inputs"), optional=bool(data.get("optional", True)),
                   base_model=data.get("base_model"), source=source)

    # -- checking --------------------------------------------------------------

    def fit(self, weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None, *,
            allow_partial: bool = False, adapter: str = "adapter", model_version: int | None = None,
            strict: bool = False, unverified: list[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays keyed by slot name that feed this model, or :class:`AdapterMismatch`.

        Accepts weights named by slot (packed or not) or, for a packed model,
        by contract name (they are packed here), in either dialect
        (:meth:`in_model_dialect`). A lower rank than a fixed rank
        slot is zero-padded (exact); a missing module is an error unless
        ``allow_partial`` (then it is fed "no adapter"). Slots the adapter does
        not cover are absent from the result; see :meth:`complete`.

        A check that cannot be made (the adapter names a base model the model's identity cannot
        be compared with) is a problem under ``strict``, else a line appended to ``unverified``.
        """
        metadata = dict(metadata or {})
        problems: list[Any] = []  # str, or (weight name, reason) grouped at the end
        unchecked: list[str] = []
        self._check_base(metadata, model_version, problems, unchecked)
        if strict:
            problems += [f"{line} (--strict)" for line in unchecked]
        elif unverified is not None:
            unverified += [f"{adapter}: {line}" for line in unchecked]
        weights, mapping_problems = self.in_model_dialect(weights)
        problems += mapping_problems

        members = {m: (slot, i) for slot in self.slots.values() for i, m in enumerate(slot.members)}
        direct: dict[str, np.ndarray] = {}
        by_slot: dict[str, dict[int, np.ndarray]] = {}
        unknown = []
        for name, array in weights.items():
            if name in self.slots:
                direct[name] = array
            elif name in members:
                slot, index = members[name]
                by_slot.setdefault(slot.name, {})[index] = array
            else:
                unknown.append(name)
        if unknown:
            problems += self._unknown(unknown)
        mixed = sorted(s for s in by_slot if s in direct)
        for slot_name in mixed:
            problems.append(f"{slot_name}: given both packed and as separate layers")

        out: dict[str, np.ndarray] = {}
        ranks: dict[str, dict[str, int]] = {}  # module path -> kind -> rank (consistency of A and B)
        for name, array in sorted(direct.items()):
            slot = self.slots[name]
            fitted = self._fit_array(name, array, slot.shape, slot, problems)
            if fitted is not None:
                out[name] = fitted
            if not slot.packed and array.ndim == len(slot.shape) and _is_lora(name):
                ranks.setdefault(module_path(name), {})[weight_kind(name)] = array.shape[slot.rank_axis]
        for slot_name, given in sorted(by_slot.items()):
            slot = self.slots[slot_name]
            packed = self._pack(slot, given, allow_partial, problems, ranks)
            if packed is not None:
                out[slot_name] = packed
        for module, kinds in sorted(ranks.items()):
            if len(kinds) == 1:
                (kind,) = kinds
                other = "lora_B" if kind == "lora_A" else "lora_A"
                problems.append(f"{module}: has {kind} but no {other} (A and B of a module come together)")
            elif len(set(kinds.values())) > 1:
                problems.append(f"{module}: lora_A has rank {kinds.get('lora_A')} but lora_B has rank "
                                f"{kinds.get('lora_B')}")
        for name, array in sorted(out.items()):  # packed slots given packed: A and B must agree too
            slot = self.slots[name]
            if not slot.packed or ".lora_A." not in name:
                continue
            partner = name.replace(".lora_A.", ".lora_B.")
            if partner not in self.slots:
                continue
            if partner not in out:
                problems.append(f"{name}: given without {partner}")
            elif array.shape[slot.rank_axis] != out[partner].shape[self.slots[partner].rank_axis]:
                problems.append(f"{name} has rank {array.shape[slot.rank_axis]} but {partner} has rank "
                                f"{out[partner].shape[self.slots[partner].rank_axis]}")
        for name in sorted(out):
            slot = self.slots[name]
            if slot.packed and ".lora_B." in name:
                partner = name.replace(".lora_B.", ".lora_A.")
                if partner in self.slots and partner not in out:
                    problems.append(f"{name}: given without {partner}")
        if not allow_partial:
            covered = set(direct)
            for slot_name, given in by_slot.items():
                covered |= {self.slots[slot_name].members[i] for i in given}
            missing = []
            for slot in self.slots.values():
                if slot.name in direct:
                    continue
                missing += [m for m in (slot.members or (slot.name,)) if m not in covered]
            if missing:
                problems.append(f"missing {len(missing)} of the model's {len(self.contract_names())} adapter "
                                f"weights: {_name_list(missing)} (use allow_partial / --allow-partial to run "
                                "those modules without adapter)")
        if problems:
            raise AdapterMismatch(_grouped(problems), adapter=adapter, model=self.source)
        return out

    def complete(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``arrays`` plus "no adapter" values for the slots the graph cannot default itself."""
        out = dict(arrays)
        if self.mode == "inputs" and self.optional:
            return out
        for slot in self.slots.values():
            if slot.name not in out:
                out[slot.name] = slot.empty()
        return out

    def _check_base(self, metadata: Mapping[str, str], model_version: int | None, problems: list[str],
                    unchecked: list[str]) -> None:
        theirs = metadata.get(META_BASE_MODEL)
        # a digest against a bare name (a hub id, a folder that was not at hand) cannot be compared
        comparable = theirs and self.base_model and ("@sha256:" in theirs) == ("@sha256:" in self.base_model)
        if comparable and not same_base_model(theirs, self.base_model):
            problems.append(f"base model: the adapter was made for {theirs}, the model was extracted from "
                            f"{self.base_model}")
        elif theirs and self.base_model and not comparable and theirs != self.base_model:
            unchecked.append(f"base model not verified: the adapter names {theirs}, the model was extracted from "
                             f"{self.base_model}, and only one of them carries a content digest")
        elif not theirs and model_version and self.base_model:
            from hostkit_extract_adapters.weights import base_model_digest

            if base_model_digest(self.base_model) != model_version:
                problems.append(f"base model: the adapter file's model_version {model_version} does not match "
                                f"{self.base_model} ({base_model_digest(self.base_model)})")

    def _unknown(self, names: list[str]) -> list[str]:
        from hostkit_adapters.dialects import dialect_of_name, other_dialect_problem

        known = list(self.slots) + [m for s in self.slots.values() for m in s.members]
        problems = []
        dialect = self.dialect
        other = [n for n in names if dialect_of_name(n) not in (None, dialect)]
        if other:  # Olive #2277: names that exist only in the other kind of graph
            problems.append(other_dialect_problem(other, dialect))
            names = [n for n in names if n not in other]
        quant = [n for n in names if ".quant." in n]
        if quant:
            problems.append(f"{len(quant)} int4-quantized weights ({_name_list(quant)}): this model takes float "
                            "adapter weights; convert without --quantize-int4")
        for name in sorted(n for n in names if ".quant." not in n):
            hint = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            problems.append(f"{name}: not an adapter weight of the model"
                            + (f" (did you mean {hint[0]}?)" if hint else ""))
        return problems

    def _fit_array(self, name: str, array: np.ndarray, shape: tuple[Any, ...], slot: Slot,
                   problems: list[str], rank_axis: int | None = None) -> np.ndarray | None:
        rank_axis = slot.rank_axis if rank_axis is None else rank_axis
        ok = True
        if str(array.dtype) != slot.dtype:
            problems.append((name, f"dtype {array.dtype}, the model takes {slot.dtype} (convert with --dtype {slot.dtype})"))
            ok = False
        if array.ndim != len(shape):
            problems.append((name, f"shape {_fmt_shape(array.shape)}, the model takes {_fmt_shape(shape)}"))
            return None
        wrong = [i for i, d in enumerate(shape) if i != rank_axis and isinstance(d, int) and array.shape[i] != d]
        fixed_rank = shape[rank_axis]
        if wrong:
            problems.append((name, f"shape {_fmt_shape(array.shape)}, the model takes {_fmt_shape(shape)}"
                                   " (an adapter for a model of other dimensions)"))
            ok = False
        elif isinstance(fixed_rank, int) and array.shape[rank_axis] > fixed_rank:
            problems.append((name, f"rank {array.shape[rank_axis]}, the model's rank is fixed at {fixed_rank}"
                                   " (extract with make_inputs = true and dynamic_lora_r = true to take any rank)"))
            ok = False
        if not ok:
            return None
        if isinstance(fixed_rank, int) and array.shape[rank_axis] < fixed_rank:
            pad = [(0, 0)] * array.ndim
            pad[rank_axis] = (0, fixed_rank - array.shape[rank_axis])
            array = np.pad(array, pad)  # zero rows/columns of A and B add nothing: exact
        return array

    def _pack(self, slot: Slot, given: dict[int, np.ndarray], allow_partial: bool, problems: list[str],
              ranks: dict[str, dict[str, int]]) -> np.ndarray | None:
        member_shape = slot.member_shape()
        axis = slot.rank_axis - 1
        fitted: dict[int, np.ndarray] = {}
        for index, array in sorted(given.items()):
            name = slot.members[index]
            if array.ndim == len(member_shape) and _is_lora(name):
                ranks.setdefault(module_path(name), {})[weight_kind(name)] = array.shape[axis]
            result = self._fit_array(name, array, member_shape, slot, problems, rank_axis=axis)
            if result is not None:
                fitted[index] = result
        if len(fitted) != len(given):
            return None
        rank = member_shape[axis] if isinstance(member_shape[axis], int) else max(a.shape[axis] for a in fitted.values())
        shape = [len(slot.members)] + [rank if i == axis else d for i, d in enumerate(member_shape)]
        packed = np.zeros(shape, dtype=slot.dtype)
        for index, array in fitted.items():
            where = [index] + [slice(0, array.shape[i]) for i in range(array.ndim)]
            packed[tuple(where)] = array  # lower ranks zero-padded: exact
        return packed


def _grouped(problems: list[Any]) -> list[str]:
    """Problems as lines; one per-weight reason shared by several weights becomes one line."""
    lines: list[str] = []
    by_reason: dict[str, list[str]] = {}
    for problem in problems:
        if isinstance(problem, tuple):
            by_reason.setdefault(problem[1], []).append(problem[0])
        else:
            lines.append(problem)
    for reason, names in by_reason.items():
        if len(names) == 1:
            lines.append(f"{names[0]}: {reason}")
        else:
            lines.append(f"{len(names)} weights: {reason}: {_name_list(names, limit=4)}")
    return lines


def _is_lora(name: str) -> bool:
    from hostkit_adapters.dialects import is_genai_name

    return is_lora_key(name) or is_genai_name(name)


def _name_list(names: list[str], limit: int = 12) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# -- reading a model's signature ----------------------------------------------------


def signature_from_metadata(metadata: Mapping[str, str], source: str = "model") -> ModelSignature | None:
    """The signature ExtractAdapters stored in a model's metadata (``None`` if absent)."""
    raw = metadata.get(SIGNATURE_KEY)
    if not raw:
        return None
    return ModelSignature.from_json(json.loads(raw), source=source)


def _value_info_shape(value_info: Any) -> tuple[Any, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims)


def signature_from_graph(model: Any, source: str = "model") -> ModelSignature:
    """Derive the signature from the graph: inputs named per the contract (``...lora_A.weight``)."""
    from onnx import helper

    metadata = {p.key: p.value for p in model.metadata_props}
    stored = signature_from_metadata(metadata, source)
    if stored is not None:
        return stored
    initializers = {t.name for t in model.graph.initializer}
    slots = {}
    for value in model.graph.input:
        if not _is_lora(value.name):
            continue
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        slots[value.name] = Slot(name=value.name, shape=_value_info_shape(value), dtype=dtype,
                                 rank_axis=RANK_AXIS[weight_kind(value.name)])
    optional = all(name in initializers for name in slots)
    return ModelSignature(slots=slots, mode="inputs", optional=optional,
                          base_model=metadata.get(META_BASE_MODEL), source=source)


def read_signature(model_path: str | Path) -> ModelSignature:
    """The adapter signature of an ONNX file (graph parsed without its external data)."""
    import onnx

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX model")
    model = onnx.load(str(path), load_external_data=False)
    signature = signature_from_graph(model, source=str(path))
    if not signature.slots:
        raise AdapterMismatch([f"{path} has no adapter inputs (run ExtractAdapters on it first)"],
                              model=str(path))
    return signature
