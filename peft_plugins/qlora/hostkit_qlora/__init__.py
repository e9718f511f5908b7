"""hostkit-qlora: LoRA on a 4-bit (nf4/fp4) bitsandbytes base, on CPU and CUDA (arXiv:2305.14314)."""

__version__ = "0.1.0"
