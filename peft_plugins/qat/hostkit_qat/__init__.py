"""hostkit-qat: the QuantizationAwareTraining pass for hostkit.

Weights and activations are fake-quantized while a PyTorch model trains, then
the model is converted to a real low-bit model (Jacob et al., CVPR 2018,
https://arxiv.org/abs/1712.05877). Back-ends: ``torch.ao.quantization`` eager
mode (static int8 TorchScript for CPU) and torchao's ``QATConfig``.

``hostkit_qat.models.load_model(handle)`` loads the pass's output in Python.
Importing this package imports no torch.
"""

__version__ = "0.1.0"
