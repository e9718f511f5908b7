"""Built-in model types (HfModel, OnnxModel, PyTorchModel) and their loaders.

Loading here means preparing the handle the first pass gets, not building a
torch module: passes load weights themselves, with the imports they need.
Plugins that convert a handle first answer before this loader (hostkit-lora
turns an ``HfModel`` with a ``gguf_file`` into a cached safetensors folder).
"""

from __future__ import annotations

from typing import Any

from hostkit.errors import PassError
from hostkit.handles import HfModel, OnnxModel, PyTorchModel
from hostkit.plugins import hookimpl
from hostkit.registry import ModelTypeSpec


@hookimpl
def hostkit_register(register: Any) -> None:
    register.model_type(ModelTypeSpec("HfModel", HfModel, "a transformers model folder (or hub id), optionally with a PEFT adapter"))
    register.model_type(ModelTypeSpec("OnnxModel", OnnxModel, "an ONNX model file, optionally with external adapter weights"))
    register.model_type(ModelTypeSpec("PyTorchModel", PyTorchModel, "a torch nn.Module from a user_script loader or saved weights"))


@hookimpl(trylast=True)
def hostkit_load_model(model: Any, context: Any) -> Any:
    if isinstance(model, HfModel) and model.gguf_file:
        raise PassError(f"model.gguf_file: no installed plugin converts GGUF files ({model.gguf_file}); "
                        "hostkit-lora does: pip install hostkit-lora")
    if isinstance(model, (HfModel, OnnxModel, PyTorchModel)):
        return model
    return None
