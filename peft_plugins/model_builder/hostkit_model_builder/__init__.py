"""hostkit-model-builder: the ModelBuilder pass (onnxruntime-genai's model builder).

``plugin`` (hookimpls) and ``config`` are light; ``build`` imports torch,
onnx and onnxruntime-genai and is imported only when the pass runs.
"""

__version__ = "0.1.0"
