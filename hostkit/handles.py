"""Model handles: small, serialisable pointers to models on disk.

Everything that flows between passes is a handle. Handles are frozen attrs
classes that round-trip through JSON (``to_json`` / ``from_json``), so the
manifest records them and a later run can resume from them. The host ships the
three handle types of the design; plugins may register more.

The host reads a handle only generically: its ``path=True`` fields are resolved
against the run file, checked and fingerprinted for the step cache, and the
whole handle is written to the manifest. The meaning of the other fields
(``HfModel.adapter_path``, ``quantization``, ``gguf_file``, ``load_kwargs``) is
the business of the plugins that read and write them; they stay on the handle
because run files and manifests name them.
"""

from __future__ import annotations

from typing import Any

import attrs

from hostkit.options import no_key, one_of, option


@attrs.frozen
class HfModel:
    """A transformers model: a local folder or a hub id, plus an optional PEFT adapter."""

    path: str = option(help="model folder, or a hub id where a hub is reachable", path=True, hub=True, folder=True)
    task: str = option("text-generation", help="text-generation or text-classification",
                       validator=one_of("text-generation", "text-classification"))
    adapter_path: str | None = option(None, help="a PEFT adapter folder to load on top of the model", path=True,
                                      folder=True)
    gguf_file: str | None = option(None, help="a GGUF file inside `path` (or an absolute path); converted once to a cached safetensors folder",
                                   within="path", loader=True)
    tokenizer_path: str | None = option(None, help="tokenizer folder when it differs from `path`", path=True,
                                        folder=True)
    torch_dtype: str | None = option(None, help="dtype to load the weights in (float32, float16, bfloat16); None keeps the saved dtype",
                                     validator=one_of("float32", "float16", "bfloat16", "auto"))
    trust_remote_code: bool = option(False, help="allow code from the model folder to run (off unless you set it)")
    quantization: dict[str, Any] | None = option(None, help="transformers.BitsAndBytesConfig arguments the base is loaded with (set by QLoRA/LoftQ)")
    load_kwargs: dict[str, Any] = option(
        factory=dict, help="extra keyword arguments for from_pretrained",
        validator=no_key("trust_remote_code", "model code runs only with trust_remote_code = true in [model] itself, "
                                              "which the manifest records"))
    num_labels: int | None = option(None, help="number of labels (text-classification)")


@attrs.frozen
class OnnxModel:
    """An ONNX model file, optionally with adapter weights that live outside it."""

    path: str = option(help="the .onnx file", path=True)
    adapter_weights: str | None = option(None, help="adapter weights file (.onnx_adapter, .npz, .safetensors)", path=True)
    adapter_mode: str | None = option(None, help="how adapters reach the graph: inputs, external or embedded",
                                      validator=one_of("inputs", "external", "embedded"))
    adapter_names: list[str] = option(factory=list, help="names of the adapter inputs / initializers")
    packed: bool = option(False, help="adapter weights packed per module type")
    base_model: str | None = option(None, help="identity of the base model the graph was exported from")
    task: str = option("text-generation", help="task of the model")
    tokenizer_path: str | None = option(None, help="tokenizer folder for text models", path=True)


@attrs.frozen
class PyTorchModel:
    """A torch ``nn.Module``: built by a ``user_script`` loader, or a saved module."""

    model_path: str | None = option(None, help="weights (safetensors or a state dict read with weights_only=True) or a saved model", path=True)
    user_script: str | None = option(None, help="Python file that defines `model_loader` (runs only because the run file names it)", path=True)
    model_loader: str | None = option(None, help="function in user_script returning an nn.Module; gets model_path (or None)")
    model_format: str = option("state_dict", help="what model_path holds: state_dict, safetensors, torchscript or torchao",
                               validator=one_of("state_dict", "safetensors", "torchscript", "torchao"))
    io_config: dict[str, Any] = option(factory=dict, help="free-form description of inputs and outputs")


BUILTIN_HANDLE_TYPES = {"HfModel": HfModel, "OnnxModel": OnnxModel, "PyTorchModel": PyTorchModel}


def path_fields(handle: Any) -> dict[str, str]:
    """Field name -> path for every set path-like field of a handle."""
    out = {}
    for field in attrs.fields(type(handle)):
        if (field.metadata or {}).get("path"):
            value = getattr(handle, field.name)
            if value:
                out[field.name] = value
    return out


def to_json(handle: Any) -> dict[str, Any]:
    """A JSON-ready dict with a ``type`` tag."""
    from hostkit.converter import converter

    data = converter.unstructure(handle)
    return {"type": type(handle).__name__, **data}


def from_json(data: dict[str, Any], types: dict[str, type] | None = None) -> Any:
    """Inverse of :func:`to_json`; ``types`` maps tags to classes (default: the built-ins)."""
    from hostkit.converter import structure_strict

    types = types or BUILTIN_HANDLE_TYPES
    data = dict(data)
    tag = data.pop("type")
    return structure_strict(data, types[tag], "model")


def relocate(handle: Any, old_prefix: str, new_prefix: str) -> Any:
    """Rewrite path fields under ``old_prefix`` to ``new_prefix`` (after a step folder is renamed)."""
    changes = {}
    for name, value in path_fields(handle).items():
        if value == old_prefix or value.startswith(old_prefix.rstrip("/") + "/"):
            changes[name] = new_prefix + value[len(old_prefix):]
    return attrs.evolve(handle, **changes) if changes else handle
