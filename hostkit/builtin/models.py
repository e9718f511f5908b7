"""Built-in model types (HfModel, OnnxModel, PyTorchModel) and their loaders.

Loading here means preparing the handle the first pass gets, not building a
torch module: passes load weights themselves, with the imports they need.
Plugins that convert a handle answer before this loader (e.g. a GGUF file into
a safetensors folder); a field marked ``option(loader=True)`` that is still set
when the handle gets here is an error: no installed plugin converts it.
"""

from __future__ import annotations

from typing import Any

import attrs

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
    for field in attrs.fields(type(model)) if attrs.has(type(model)) else ():
        if (field.metadata or {}).get("loader") and getattr(model, field.name):
            raise PassError(f"model.{field.name}: no installed plugin loads {type(model).__name__} handles with "
                            f"{field.name} set ({getattr(model, field.name)}); see `hostkit plugins`")
    if isinstance(model, (HfModel, OnnxModel, PyTorchModel)):
        return model
    return None
