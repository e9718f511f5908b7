"""ExtractAdapters: cut the LoRA weights out of an ONNX graph so one model serves many adapters.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685) adds ``(x A) B`` to a frozen ``x W``; the base weights can be
shared by every adapter trained on them, which is what this pass makes possible
for an exported graph (the seed's "Extract Adapters", Olive's pass of the name).

The input graph follows the adapter contract (``hostkit_adapters.contract``):
each LoRA weight is an initializer named ``<module path>.lora_A.weight`` /
``.lora_B.weight``, A ``[in, r]`` and B ``[r, out]`` with the scaling folded
into B, consumed as ``y = x W + (x A) B``. This module takes those
initializers out of the graph and saves them in a weights file; the graph then
gets them either

* as **inputs** (``make_inputs = true``): with a symbolic rank
  (``dynamic_lora_r``) so adapters of any rank fit, and with zero-size
  defaults (``optional_inputs``) so that a run without adapter is the base
  model (``x A`` is ``[.., 0]`` and ``(x A) B`` is zeros); or
* as **external initializers** (``make_inputs = false``) pointing at a file
  that does not exist: a session gets them through
  ``SessionOptions.add_external_initializers`` (one session per adapter).

With ``pack_inputs = true`` the weights of one module type (e.g. every
layer's ``self_attn.q_proj.lora_A``) are stacked into one ``[layers, in, r]``
slot and ``Gather`` nodes inside the graph hand each layer its slice, so a
caller feeds 2 x (module types) tensors instead of 2 x layers x types. Layers
of different rank are zero-padded to the largest, which is exact.

Initializers that keep PEFT's layout (``...lora_A.default.weight`` ``[r, in]``
behind a ``Transpose``, as torch's exporters write them) are renamed and
transposed into the contract. A scaling ``Mul`` left in the graph is not
folded: export with hostkit's OnnxConversion, which folds it into B.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from hostkit_adapters.contract import (META_ALPHA, META_ALPHA_PATTERN, META_BASE_MODEL, META_R, META_RANK_PATTERN,
                                      META_TARGET_MODULES, META_USE_RSLORA, RANK_AXIS, RANK_DIM, ContractError,
                                      adapter_metadata, contract_name, is_lora_key, module_path, weight_kind)
from hostkit_adapters.dialects import is_genai_name
from hostkit_extract_adapters.signature import (EXTERNAL_LOCATION, PACKED_SUFFIX, SIGNATURE_KEY, ModelSignature,
                                                Slot)
from hostkit_extract_adapters.weights import save_weights

MODEL_FILE = "model.onnx"
WEIGHTS_STEM = "adapter_weights"
GENAI_CONFIG = "genai_config.json"
# protobuf cannot serialise a message of 2 GiB or more: larger models keep their weights beside the graph
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja", "generation_config.json", "config.json")


class ExtractError(ValueError):
    """The graph cannot be extracted (no adapters, a layout the contract does not know)."""


@attrs.frozen
class ExtractResult:
    model_path: Path
    weights_path: Path
    signature: ModelSignature
    ranks: dict[str, int]


# -- finding the adapter weights ---------------------------------------------------------


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _is_plain_transpose(node: Any) -> bool:
    if node.op_type != "Transpose":
        return False
    perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
    return not perm or perm[0] == [1, 0]


def find_adapter_weights(model: Any) -> dict[str, tuple[Any, np.ndarray]]:
    """Contract name -> (initializer, array in contract layout) for every LoRA initializer.

    A PEFT-layout initializer whose every consumer is a 2-D ``Transpose`` is
    transposed here and the ``Transpose`` nodes are bypassed.
    """
    from onnx import numpy_helper

    from hostkit_adapters.dialects import dialect_of

    graph = model.graph
    users = _consumers(graph)
    found: dict[str, tuple[Any, np.ndarray]] = {}
    dialect_of(init.name for init in graph.initializer)  # refuses a graph that mixes both dialects
    for init in graph.initializer:
        if is_genai_name(init.name):  # onnxruntime-genai's builder: its names are what genai feeds
            name = init.name
        elif is_lora_key(init.name):
            name = contract_name(init.name)
        else:
            continue
        if name in found:
            raise ExtractError(f"two initializers map to {name}: {found[name][0].name} and {init.name}")
        array = numpy_helper.to_array(init)
        consumers = users.get(init.name, [])
        if consumers and all(_is_plain_transpose(n) for n in consumers) and array.ndim == 2:
            array = array.T
            for node in consumers:  # rewire the transpose's users to the initializer itself
                out = node.output[0]
                for user in users.get(out, []):
                    for i, value in enumerate(user.input):
                        if value == out:
                            user.input[i] = init.name
                graph.node.remove(node)
            users = _consumers(graph)
        if array.ndim != 2:
            raise ExtractError(f"{init.name}: a LoRA weight must be 2-D, got shape {list(array.shape)}")
        found[name] = (init, np.ascontiguousarray(array))
    return found


def _module_ranks(weights: dict[str, np.ndarray]) -> dict[str, int]:
    ranks: dict[str, int] = {}
    problems = []
    modules: dict[str, dict[str, np.ndarray]] = {}
    for name, array in weights.items():
        modules.setdefault(module_path(name), {})[weight_kind(name)] = array
    for module, pair in sorted(modules.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            problems.append(f"{module}: has {', '.join(sorted(pair))} only")
            continue
        ra, rb = pair["lora_A"].shape[RANK_AXIS["lora_A"]], pair["lora_B"].shape[RANK_AXIS["lora_B"]]
        if ra != rb:
            problems.append(f"{module}: lora_A {list(pair['lora_A'].shape)} and lora_B {list(pair['lora_B'].shape)} "
                            "do not share a rank (is the graph in the contract layout A [in, r], B [r, out]?)")
        ranks[module] = ra
    if problems:
        raise ExtractError("the LoRA weights do not follow the adapter contract:\n" + "\n".join(f"  {p}" for p in problems))
    return ranks


# -- packing ------------------------------------------------------------------------


_LAYER = re.compile(r"\.(\d+)(?=\.)")


def pack_groups(names: list[str], shapes: dict[str, tuple[int, ...]]) -> dict[str, list[str]]:
    """Packed slot name -> member contract names (numeric layer order).

    Members share a module type (the path without its layer number, e.g.
    ``model.layers.self_attn.q_proj``), a weight kind and the non-rank
    dimension; a module without a layer number stays on its own.
    """
    groups: dict[tuple[str, str, int], list[str]] = {}
    for name in names:
        kind = weight_kind(name)
        module = module_path(name)
        if not _LAYER.search(module):
            continue
        module_type = _LAYER.sub("", module, count=1)
        other = shapes[name][1 - RANK_AXIS[kind]]
        groups.setdefault((module_type, kind, other), []).append(name)

    def layer_number(name: str) -> int:
        return int(_LAYER.search(module_path(name)).group(1))

    out: dict[str, list[str]] = {}
    types_seen: dict[tuple[str, str], int] = {}
    for (module_type, kind, other), members in sorted(groups.items()):
        count = types_seen[(module_type, kind)] = types_seen.get((module_type, kind), 0) + 1
        suffix = "" if count == 1 else f".{other}"
        out[f"{module_type}{suffix}.{kind}.weight{PACKED_SUFFIX}"] = sorted(members, key=layer_number)
    return out


# -- the pass ---------------------------------------------------------------------------


def extract_adapters(model_path: str | Path, output_dir: str | Path, *, make_inputs: bool = True,
                     pack_inputs: bool = False, dynamic_lora_r: bool = True, optional_inputs: bool = True,
                     save_format: str = "onnx_adapter", base_model: str | None = None,
                     tokenizer_dir: str | Path | None = None) -> ExtractResult:
    """Extract the adapters of ``model_path`` into ``output_dir`` (``model.onnx`` + weights file)."""
    import onnx
    from onnx import helper, numpy_helper

    model_path = Path(model_path)
    output_dir = Path(output_dir)
    genai_config = model_path.parent / GENAI_CONFIG
    external = any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in onnx.load(str(model_path), load_external_data=False).graph.initializer)
    model = onnx.load(str(model_path))
    graph = model.graph
    metadata = {p.key: p.value for p in model.metadata_props}
    if SIGNATURE_KEY in metadata:
        raise ExtractError(f"{model_path}: its adapters were already extracted")
    try:
        found = find_adapter_weights(model)
    except ContractError as exc:
        raise ExtractError(str(exc)) from None
    if not found and any(n.op_type == "MatMulNBits" and "/lora_" in n.name for n in graph.node):
        raise ExtractError(f"{model_path}: its LoRA MatMuls are int4 (MatMulNBits), so there are no float "
                           "adapter weights to take out; build it with ModelBuilder quantize_adapter = false")
    if not found:
        raise ExtractError(f"{model_path}: no LoRA weights named per the adapter contract "
                           "(<module>.lora_A.weight / .lora_B.weight); export an HfModel with an unmerged "
                           "adapter (OnnxConversion) first")
    weights = {name: array for name, (_, array) in found.items()}
    if genai_config.is_file() and not make_inputs and any(is_genai_name(n) for n in weights):
        raise ExtractError(f"{model_path}: an onnxruntime-genai model ({GENAI_CONFIG} beside it) takes adapters as "
                           "inputs (og.Adapters); external initializers would make it unloadable: "
                           "use make_inputs = true")
    ranks = _module_ranks(weights)
    base_model = base_model or metadata.get(META_BASE_MODEL)

    # every initializer now lives under its contract name
    for name, (init, array) in found.items():
        if init.name != name:
            for node in graph.node:
                for i, value in enumerate(node.input):
                    if value == init.name:
                        node.input[i] = name
        init.CopyFrom(numpy_helper.from_array(array, name))

    shapes = {name: tuple(a.shape) for name, a in weights.items()}
    groups = pack_groups(sorted(weights), shapes) if pack_inputs else {}
    slots_values: dict[str, np.ndarray] = {}
    slots: dict[str, Slot] = {}
    packed_members = {m for members in groups.values() for m in members}
    new_nodes = []
    for slot_name, members in groups.items():
        kind = weight_kind(members[0])
        axis = RANK_AXIS[kind]
        rank = max(weights[m].shape[axis] for m in members)
        member_shape = list(weights[members[0]].shape)
        member_shape[axis] = rank
        stacked = np.zeros([len(members)] + member_shape, dtype=weights[members[0]].dtype)
        for i, member in enumerate(members):
            array = weights[member]
            stacked[(i,) + tuple(slice(0, d) for d in array.shape)] = array  # lower ranks zero-padded: exact
            index_name = f"{slot_name}.index.{i}"
            graph.initializer.append(numpy_helper.from_array(np.array(i, dtype=np.int64), index_name))
            new_nodes.append(helper.make_node("Gather", [slot_name, index_name], [member], axis=0,
                                              name=f"{member}.unpack"))
        slots_values[slot_name] = stacked
        slots[slot_name] = Slot(name=slot_name, shape=(len(members), *member_shape), dtype=stacked.dtype.name,
                                rank_axis=axis + 1, members=tuple(members))
    for name, array in weights.items():
        if name not in packed_members:
            slots_values[name] = array
            slots[name] = Slot(name=name, shape=tuple(array.shape), dtype=array.dtype.name,
                               rank_axis=RANK_AXIS[weight_kind(name)])

    # take the weights out of the graph
    keep = [init for init in graph.initializer if init.name not in weights]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [value for value in graph.input if value.name not in weights]  # IR < 4 lists initializers as inputs
    del graph.input[:]
    graph.input.extend(inputs)
    if new_nodes:
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(new_nodes + rest)

    # shapes the exporter recorded for tensors that carry the rank now lie (the rank is symbolic, or 0 with no
    # adapter): onnxruntime plans buffer reuse from them and fails ("re-use buffer {1,7,0} != {1,7,8}")
    drop_rank_shapes(graph, set(weights))
    dynamic = make_inputs and dynamic_lora_r
    for name, slot in list(slots.items()):
        array = slots_values[name]
        if dynamic:
            shape = list(slot.shape)
            shape[slot.rank_axis] = rank_symbol(name)
            slot = slots[name] = attrs.evolve(slot, shape=tuple(shape))
        elem_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        if make_inputs:
            graph.input.append(helper.make_tensor_value_info(name, elem_type, list(slot.shape)))
            if optional_inputs:  # an initializer of an input's name is its default value
                graph.initializer.append(numpy_helper.from_array(slot.empty(), name))
        else:
            graph.initializer.append(_external_placeholder(name, elem_type, array.shape))

    signature = ModelSignature(slots=slots, mode="inputs" if make_inputs else "external",
                               optional=bool(make_inputs and optional_inputs), base_model=base_model,
                               source=str(output_dir / MODEL_FILE))
    _set_metadata(model, {SIGNATURE_KEY: json.dumps(signature.as_json(), sort_keys=True),
                          **({META_BASE_MODEL: base_model} if base_model else {})})

    output_dir.mkdir(parents=True, exist_ok=True)
    out_model = output_dir / MODEL_FILE
    _save_model(model, out_model, external=external)
    file_metadata = weights_metadata(metadata, ranks, weights, base_model)
    weights_path = save_weights(slots_values, output_dir / WEIGHTS_STEM, save_format, file_metadata)
    if tokenizer_dir is not None:
        copy_tokenizer(Path(tokenizer_dir), output_dir)
    if genai_config.is_file() and make_inputs:  # external initializers: for onnxruntime sessions only
        write_genai_config(genai_config, output_dir / GENAI_CONFIG, out_model.name)
    return ExtractResult(model_path=out_model, weights_path=weights_path, signature=signature, ranks=ranks)


def rank_symbol(slot_name: str) -> str:
    """The symbolic rank dimension of a slot: ``lora_r.<module>``, shared by the module's A and B only.

    One symbol for every module would tell onnxruntime that all ranks are equal; with per-module
    ranks (rank_pattern) its memory planner then hands ``x A`` of one module the buffer of
    another's ("Shape mismatch attempting to re-use buffer {1,13,2} != {1,13,4}").
    """
    name = slot_name[: -len(PACKED_SUFFIX)] if slot_name.endswith(PACKED_SUFFIX) else slot_name
    return f"{RANK_DIM}.{module_path(name)}"


_CONTRACTING = ("MatMul", "Gemm", "MatMulInteger", "FusedMatMul")


def rank_carrying_values(graph: Any, adapter_values: set[str]) -> set[str]:
    """Every value whose shape may contain a LoRA rank: the adapter weights and what flows from them.

    Data flows forward from each adapter weight; a product whose two operands both carry a rank
    (``(x A) B``) contracts it away, so the flow stops there. Over-approximating is harmless:
    the set is used to forget recorded shapes.
    """
    carrying = set(adapter_values)
    for node in graph.node:  # ONNX nodes are topologically sorted
        inputs = [name for name in node.input if name in carrying]
        if not inputs:
            continue
        if node.op_type in _CONTRACTING and len(node.input) >= 2 and node.input[0] in carrying \
                and node.input[1] in carrying:
            continue
        carrying.update(name for name in node.output if name)
    return carrying


def drop_rank_shapes(graph: Any, adapter_values: set[str]) -> int:
    """Remove ``value_info`` of rank-carrying values (onnxruntime infers them again); returns how many."""
    carrying = rank_carrying_values(graph, adapter_values)
    keep = [value for value in graph.value_info if value.name not in carrying]
    dropped = len(graph.value_info) - len(keep)
    if dropped:
        del graph.value_info[:]
        graph.value_info.extend(keep)
    return dropped


def _external_placeholder(name: str, elem_type: int, shape: tuple[int, ...]) -> Any:
    """An initializer whose data "lives" in a file that does not exist: supplied at session creation."""
    import onnx
    from onnx import helper

    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = elem_type
    tensor.dims.extend(shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    size = int(np.prod(shape)) * helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    for key, value in (("location", EXTERNAL_LOCATION), ("offset", "0"), ("length", str(size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _set_metadata(model: Any, values: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _save_model(model: Any, path: Path, *, external: bool = False) -> None:
    """Save inline, or (large models, and those whose weights were external already) beside the graph."""
    import onnx

    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size < EXTERNAL_DATA_THRESHOLD and not external:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)


def weights_metadata(model_metadata: dict[str, str], ranks: dict[str, int], weights: dict[str, np.ndarray],
                     base_model: str | None) -> dict[str, str]:
    """Contract metadata for the extracted weights: what the exporter recorded, else what the weights show."""
    config: dict[str, Any] = {"r": int(model_metadata.get(META_R) or max(ranks.values()))}
    if META_ALPHA in model_metadata:
        config["lora_alpha"] = float(model_metadata[META_ALPHA])
    if model_metadata.get(META_USE_RSLORA) == "true":
        config["use_rslora"] = True
    for key, field in ((META_RANK_PATTERN, "rank_pattern"), (META_ALPHA_PATTERN, "alpha_pattern")):
        if model_metadata.get(key):
            config[field] = json.loads(model_metadata[key])
    targets = sorted({module_path(n).rsplit(".", 1)[-1] for n in weights})
    dtypes = sorted({a.dtype.name for a in weights.values()})
    metadata = adapter_metadata(config, base_model=base_model or "", dtype=",".join(dtypes),
                                target_modules=targets)
    if "lora_alpha" not in config:
        metadata.pop(META_ALPHA, None)  # folded into B by the exporter and not recorded: unknown
    if not base_model:
        metadata.pop(META_BASE_MODEL, None)
    if META_TARGET_MODULES in model_metadata:
        metadata[META_TARGET_MODULES] = model_metadata[META_TARGET_MODULES]
    return metadata


def write_genai_config(source: Path, dest: Path, model_file: str) -> None:
    """The onnxruntime-genai config of the source folder, pointing at the extracted graph.

    genai feeds the adapter inputs by name from ``og.Adapters`` and falls back on
    their zero-size defaults, so nothing about the adapters goes into the config;
    the decoder's ``filename`` is the extracted graph's.
    """
    data = json.loads(source.read_text())
    decoder = data.get("model", {}).get("decoder", {})
    if "filename" in decoder:
        decoder["filename"] = model_file
    dest.write_text(json.dumps(data, indent=4) + "\n")


def copy_tokenizer(source: Path, dest: Path) -> bool:
    """Copy a tokenizer's files next to the extracted model (so ``hostkit infer`` finds them)."""
    import shutil

    copied = False
    if source.is_dir() and source.resolve() != dest.resolve():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, dest / name)
                copied = True
    return copied
