"""hostkit-merge-adapters: the MergeAdapterWeights pass.

``plugin`` (hookimpls) and ``config`` are light; ``loading`` and ``merge`` import
torch, transformers and peft and are imported only when the pass runs.
``loading`` is also the place other plugins (OnnxConversion) load an
``HfModel`` handle from: base, dequantized 4-bit base, adapter.
"""

__version__ = "0.1.0"
