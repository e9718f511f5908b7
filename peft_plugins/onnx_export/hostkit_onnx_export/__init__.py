"""hostkit-onnx-export: the OnnxConversion exporter.

``plugin`` (hookimpls) and ``config`` are light; ``export`` and ``lora_modules``
import torch, transformers, peft and onnx and are imported only when the
exporter runs.
"""

__version__ = "0.1.0"
