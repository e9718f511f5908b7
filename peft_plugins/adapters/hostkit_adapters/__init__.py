"""hostkit-adapters: the one adapter contract shared by the deploy plugins.

A library, not a plugin (no entry point, no pass type): OnnxConversion,
ExtractAdapters, ``convert-adapters``, MergeAdapterWeights and ModelBuilder
import :mod:`hostkit_adapters.contract`, so they cannot drift apart.
Importing it never imports torch, numpy or onnx.
"""

__version__ = "0.1.0"
