"""hostkit: a minimal host for parameter-efficient fine-tuning and adapter deployment.

The public API for plugin authors lives here; importing it never imports torch,
transformers, peft, bitsandbytes or onnxruntime.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hostkit.data import DataTable  # noqa: E402
from hostkit.errors import ConfigError, MissingRequirement, PassError, PluginLoadError  # noqa: E402
from hostkit.handles import HfModel, OnnxModel, PyTorchModel  # noqa: E402
from hostkit.options import in_range, non_negative, one_of, option, positive  # noqa: E402
from hostkit.plugins import PluginHost, hookimpl  # noqa: E402
from hostkit.registry import CommandSpec, DataTypeSpec, ModelTypeSpec, PassSpec, Requirements  # noqa: E402

__all__ = [
    "CommandSpec", "ConfigError", "DataTable", "DataTypeSpec", "HfModel", "MissingRequirement", "ModelTypeSpec", "OnnxModel",
    "PassError", "PassSpec", "PluginHost", "PluginLoadError", "PyTorchModel", "Requirements",
    "__version__", "hookimpl", "in_range", "non_negative", "one_of", "option", "positive",
]
