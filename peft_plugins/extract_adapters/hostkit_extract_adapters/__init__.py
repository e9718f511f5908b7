"""hostkit-extract-adapters: one ONNX model, many LoRA adapters.

* pass ``ExtractAdapters`` (:mod:`hostkit_extract_adapters.extract`): adapter weights out of the graph, as
  inputs or external initializers, packed or not, saved with contract metadata;
* command ``hostkit convert-adapters`` (:mod:`hostkit_extract_adapters.convert`): a PEFT adapter folder to
  weights that fit an extracted model, checked against it;
* :class:`hostkit_extract_adapters.infer.AdapterSession` and ``hostkit infer``: one onnxruntime session
  serving many adapters, switched per call.

Importing this package imports neither onnx, onnxruntime nor numpy.
"""

__version__ = "0.1.0"
