"""ModelBuilder: an ``HfModel`` (merged, or with its LoRA adapter) to an onnxruntime-genai folder.

onnxruntime-genai's model builder writes an optimized decoder graph (fused
attention as ``GroupQueryAttention``, a KV cache, int4 ``MatMulNBits`` or
fp16/bf16/fp32 weights), ``genai_config.json`` and the tokenizer files, which
``og.Model(folder)`` opens as they are. This module calls its Python API
(``parse_extra_options`` + ``create_model``; its CLI's ``--help`` crashes on a
``%`` in a help string) and adds what hostkit needs around it:

* the input is loaded the way MergeAdapterWeights loads it
  (:mod:`hostkit_merge_adapters.loading`): a 4-bit base (QLoRA, LoftQ over
  bitsandbytes) is dequantized exactly, written as a float folder and built
  from there, so the graph holds what the adapter was trained against;
* with an adapter, the builder adds ``lora_A``/``lora_B`` MatMuls with the
  scaling folded into B (its ``adapter_path`` option). It would quantize them
  to int4 with the base; by default they are listed in ``nodes_to_exclude``
  so the adapter stays float (a few MB gains nothing from int4 and loses
  accuracy, and ExtractAdapters needs float weights);
* every adapter weight of the PEFT file must appear in the graph under the
  builder's name (:mod:`hostkit_adapters.dialects`), so a module the
  builder silently skipped is an error here, not a wrong model later;
* ``genai_config.json``'s ``search`` gets the pass's defaults; the graph's
  metadata records the base model identity, the adapter's contract metadata
  and the dialect, for ExtractAdapters and convert-adapters.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from hostkit import OnnxModel, PassError
from hostkit_adapters import contract as adapter_contract

MODEL_FILE = "model.onnx"
GENAI_CONFIG = "genai_config.json"
LOG_FILE = "builder.log"
META_DIALECT = "hostkit.dialect"
META_PRECISION = "hostkit.precision"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")


def build_model(handle: Any, config: Any, output_dir: Path, context: Any = None) -> OnnxModel:
    """Build ``handle`` into ``output_dir`` with onnxruntime-genai's builder; return the OnnxModel handle."""
    output_dir = Path(output_dir)
    if handle.task != "text-generation":
        raise PassError(f"ModelBuilder builds text-generation models, the model is {handle.task}")
    adapter_config = None
    if handle.adapter_path and not config.merge_adapter_weights:
        adapter_config = _read_adapter_config(Path(handle.adapter_path))
        reason = adapter_contract.unsupported_reason(adapter_config)
        if reason:
            raise PassError(f"the adapter cannot be built as LoRA MatMuls: {reason} "
                            "(or set merge_adapter_weights = true)")
    try:
        from onnxruntime_genai.models import builder
    except ImportError:
        raise PassError("ModelBuilder needs onnxruntime-genai: pip install 'hostkit-model-builder[genai]'") from None
    expected = _expected_names(handle, adapter_config)  # refuses modules the builder has no LoRA for
    if context is not None and not context.is_main_process:
        return _handle(handle, output_dir, expected)

    output_dir.mkdir(parents=True, exist_ok=True)
    work = output_dir / ".hostkit-build"
    shutil.rmtree(work, ignore_errors=True)
    facts: dict[str, Any] = {}
    try:
        source, facts = _float_source(handle, config, work, context)
        adapter_path = handle.adapter_path if adapter_config is not None else None
        extra = _extra_options(config, adapter_path, _text_config(source))
        _progress(context, f"building the {config.precision} graph with onnxruntime-genai")
        start = time.perf_counter()
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), _captured_logging(log):
                options = builder.parse_extra_options(
                    None, str(source), str(output_dir), _builder_precision(config), config.execution_provider,
                    str(work / "cache"), [f"{k}={v}" for k, v in extra.items()])
                builder.create_model(None, str(source), str(output_dir), _builder_precision(config),
                                     config.execution_provider, str(work / "cache"), **options)
        except Exception as exc:  # noqa: BLE001 - the builder raises bare Exceptions with long texts
            (output_dir / LOG_FILE).write_text(log.getvalue())
            raise PassError(f"onnxruntime-genai's builder failed: {type(exc).__name__}: {str(exc)[:500]} "
                            f"(its output is in {output_dir / LOG_FILE})") from exc
        (output_dir / LOG_FILE).write_text(log.getvalue())
        build_s = round(time.perf_counter() - start, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    path = output_dir / MODEL_FILE
    if not path.is_file() or not (output_dir / GENAI_CONFIG).is_file():
        raise PassError(f"onnxruntime-genai's builder wrote no {MODEL_FILE} / {GENAI_CONFIG} in {output_dir} "
                        f"(see {output_dir / LOG_FILE})")
    if _builder_precision(config) != config.precision:  # int4_scheme = "q4_1": an fp32 graph, requantized
        from hostkit_model_builder.q4_1 import requantize

        _progress(context, "requantizing the base MatMuls into Q4_1 int4 blocks")
        facts.update(requantize(path, accuracy_level=config.int4_accuracy_level or 4))
    names = _check_graph(path, expected if adapter_config is not None else None, config)
    base_identity = adapter_contract.base_model_identity(handle.path)
    metadata = {
        "hostkit.producer": adapter_contract.producer(),
        adapter_contract.META_BASE_MODEL: base_identity,
        "hostkit.task": handle.task,
        META_DIALECT: "genai",
        META_PRECISION: config.precision,
        "hostkit.dequantized": "true" if facts.get("dequantized") else "false",
    }
    if adapter_config is not None:
        metadata.update(adapter_contract.adapter_metadata(
            adapter_config, base_model=base_identity, dtype=_float_dtype(config),
            target_modules=sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names})))
    write_metadata(path, metadata)
    _apply_search(output_dir / GENAI_CONFIG, config.search)
    if "shared_embeddings" in extra and "shared_embeddings" not in config.extra_options:  # set by _extra_options
        facts["shared_embeddings"] = ("off: asymmetric int4 of a shared embedding gives a graph onnxruntime cannot "
                                      "load; the embedding stays float, lm_head is int4")
    notes = {**facts, "precision": config.precision, "execution_provider": config.execution_provider,
             "build_s": build_s, "adapter_weights": len(names), "quantized_adapter": config.quantize_adapter,
             "size_bytes": sum(p.stat().st_size for p in output_dir.iterdir() if p.is_file())}
    if context is not None:
        context.note(**notes)
        context.report_metric("model_size_mb", round(notes["size_bytes"] / 2**20, 3))
    return _handle(handle, output_dir, names, base_identity)


@contextlib.contextmanager
def _captured_logging(stream: io.StringIO) -> Iterator[None]:
    """Route log records into ``stream`` while the builder runs.

    onnxruntime's int4 quantizer calls ``logging.basicConfig(level=INFO)`` when it
    is imported, which would print a line per MatMul and leave the root logger at
    INFO for the rest of the run; with a handler in place, basicConfig does nothing.
    """
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers = [logging.StreamHandler(stream)]
    try:
        yield
    finally:
        root.handlers = handlers
        root.setLevel(level)


# -- the input --------------------------------------------------------------------------


def _float_source(handle: Any, config: Any, work: Path, context: Any) -> tuple[Path, dict[str, Any]]:
    """A local float model folder with its tokenizer: the handle's own, or one written from it.

    A quantized base is dequantized as MergeAdapterWeights does; a merge is done
    over that base; a folder without tokenizer files gets the handle's tokenizer.
    """
    from hostkit_merge_adapters.loading import tokenizer_source

    base = Path(handle.path)
    plain = (base.is_dir() and (base / "config.json").is_file() and not handle.quantization
             and not (handle.adapter_path and config.merge_adapter_weights)
             and any((base / f).is_file() for f in TOKENIZER_FILES))
    if plain:
        return base, {"dequantized": False}
    import torch

    from hostkit_merge_adapters.loading import load_base, load_with_adapter, save_tokenizer

    _progress(context, "writing a float copy of the base" + (" (dequantized)" if handle.quantization else ""))
    if handle.adapter_path and config.merge_adapter_weights:
        peft_model, facts = load_with_adapter(handle, dtype="float32")
        model = peft_model.merge_and_unload(safe_merge=True)
        facts["merged"] = True
    else:
        model, facts = load_base(handle, dtype="float32")
    source = work / "base"
    with torch.no_grad():
        model.save_pretrained(source, safe_serialization=True)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(source)
    if not save_tokenizer(handle, source):
        raise PassError(f"no tokenizer found for {handle.path} (tried {tokenizer_source(handle)}): "
                        "onnxruntime-genai needs one; set tokenizer_path in [model]")
    return source, facts


def _text_config(source: Path) -> dict[str, Any]:
    """The language model's part of ``source/config.json`` (``text_config`` of a multimodal one), with
    ``tie_word_embeddings`` taken from the top level where only that level says it."""
    config = json.loads((source / "config.json").read_text())
    text = config.get("text_config") or config
    return {"tie_word_embeddings": config.get("tie_word_embeddings"), **text}


def lora_matmul_nodes(layers: int) -> list[str]:
    """The builder's names of every LoRA MatMul node it can make (excluded from int4 quantization)."""
    modules = [("attn", p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
              [("mlp", p) for p in ("gate_proj", "up_proj", "down_proj")]
    return [f"/model/layers.{i}/{block}/{proj}/lora_{kind}/MatMul"
            for i in range(layers) for block, proj in modules for kind in "AB"]


def _builder_precision(config: Any) -> str:
    """What the builder writes: fp32 for ``int4_scheme = "q4_1"`` (:mod:`hostkit_model_builder.q4_1` quantizes)."""
    return "fp32" if config.precision == "int4" and config.int4_scheme == "q4_1" else config.precision


def _extra_options(config: Any, adapter_path: str | None, model_config: dict[str, Any]) -> dict[str, str]:
    layers = int(model_config.get("num_hidden_layers") or 0)
    extra: dict[str, str] = {}
    for key, value in config.extra_options.items():
        extra[key] = _option_text(value)
    if _builder_precision(config) == "int4":
        # Olive's int4_* names are the builder's block_size / is_symmetric / accuracy_level
        extra["block_size"] = str(config.int4_block_size)
        extra["is_symmetric"] = "true" if config.int4_is_symmetric else "false"
        if config.int4_accuracy_level is not None:
            extra["accuracy_level"] = str(config.int4_accuracy_level)
        tied = bool(model_config.get("tie_word_embeddings"))
        if not config.int4_is_symmetric and tied and "shared_embeddings" not in extra:
            # a tied model's shared asymmetric embedding (GatherBlockQuantized + uint4 zero points) gets a
            # graph onnxruntime cannot load (genai 0.18: "Type (tensor(uint8)) of output arg
            # (/model/embed_tokens/Reshape/output_0)"): keep the embedding a float Gather
            extra["shared_embeddings"] = "false"
    if config.exclude_embeds:
        extra["exclude_embeds"] = "true"
    if config.exclude_lm_head:
        extra["exclude_lm_head"] = "true"
    if adapter_path:
        extra["adapter_path"] = str(adapter_path)
        if _builder_precision(config) == "int4" and not config.quantize_adapter:
            given = [n for n in str(extra.get("nodes_to_exclude", "")).split(",") if n]
            extra["nodes_to_exclude"] = ",".join(given + [n for n in lora_matmul_nodes(layers) if n not in given])
    return extra


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


# -- the output -------------------------------------------------------------------------


def _check_graph(path: Path, expected: list[str] | None, config: Any) -> list[str]:
    """The builder names of the adapter weights, each checked against the PEFT file; float unless asked."""
    import onnx

    from hostkit_adapters.dialects import is_genai_name

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    names = sorted(n for n in initializers if is_genai_name(n))
    if expected is None:
        if names:
            raise PassError(f"{path}: the builder wrote LoRA weights for a model without adapter: {names[:2]}")
        return []
    quantized = sorted(n.name for n in graph.node if n.op_type == "MatMulNBits" and "/lora_" in n.name)
    if config.quantize_adapter:  # int4 LoRA MatMuls: their weights are MatMulNBits initializers
        return sorted(n for n in initializers if "/lora_" in n or ".lora_" in n)
    if not expected:  # a .bin adapter: nothing to compare with, take the graph's names
        expected = names
    missing = sorted(set(expected) - set(names))
    if missing:
        raise PassError(f"the builder's graph lacks {len(missing)} of the adapter's {len(expected)} weights "
                        f"(modules it does not know?): {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    if quantized:
        raise PassError(f"the builder quantized {len(quantized)} LoRA MatMuls although quantize_adapter = false: "
                        f"{', '.join(quantized[:3])}")
    return names


def _expected_names(handle: Any, adapter_config: dict[str, Any] | None) -> list[str]:
    """The builder names the PEFT adapter's weights map to."""
    if not handle.adapter_path or adapter_config is None:
        return []
    from safetensors import safe_open

    from hostkit_adapters.dialects import genai_modules, genai_name

    file = Path(handle.adapter_path) / "adapter_model.safetensors"
    if not file.is_file():
        return []  # a .bin adapter: the graph's own names are taken as they are
    names: set[str] = set()
    with safe_open(str(file), "np") as weights:
        keys = list(weights.keys())
    for key in keys:
        if not adapter_contract.is_lora_key(key):
            continue
        name = adapter_contract.contract_name(key)
        try:
            modules = genai_modules(adapter_contract.module_path(name))
        except adapter_contract.ContractError as exc:
            raise PassError(f"the adapter cannot be built: {exc}") from None
        names.update(genai_name(m, adapter_contract.weight_kind(name)) for m in modules)
    return sorted(names)


def write_metadata(path: Path, values: dict[str, str]) -> None:
    """Set ``metadata_props`` of the graph file only (the external weights file is left as it is)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save_model(model, str(path))


def _apply_search(genai_config: Path, search: dict[str, Any]) -> None:
    if not search:
        return
    data = json.loads(genai_config.read_text())
    data.setdefault("search", {}).update(search)
    genai_config.write_text(json.dumps(data, indent=4) + "\n")


def _handle(handle: Any, output_dir: Path, names: list[str], base_identity: str | None = None) -> OnnxModel:
    return OnnxModel(path=str(output_dir / MODEL_FILE), adapter_mode="embedded" if names else None,
                     adapter_names=list(names),
                     base_model=base_identity or adapter_contract.base_model_identity(handle.path),
                     task=handle.task, tokenizer_path=str(output_dir))


def _float_dtype(config: Any) -> str:
    return {"fp16": "float16", "bf16": "bfloat16"}.get(config.precision, "float32")


def _read_adapter_config(adapter: Path) -> dict[str, Any]:
    try:
        return json.loads((adapter / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise PassError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)") from None
    except ValueError as exc:
        raise PassError(f"{adapter / 'adapter_config.json'}: not valid JSON ({exc})") from None


def _progress(context: Any, message: str) -> None:
    if context is not None:
        context.progress(message)
