"""LoftQ initialisation on any device bitsandbytes quantizes on (CPU included).

LoftQ (Li et al., "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large
Language Models", arXiv:2310.08659) chooses the quantized base ``Q`` and the
LoRA factors together, so that the model LoRA fine-tuning starts from is as
close as possible to the full-precision one:

    min_{Q, A, B} || W - (Q + s * B A) ||_F

with ``Q`` an nf4 matrix, ``A`` of shape ``[r, in]`` and ``B`` of shape
``[out, r]`` (peft's ``lora_A`` / ``lora_B`` layout) and ``s`` the LoRA scaling
(``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA). It alternates, ``T =
loftq_iter`` times, starting from ``B A = 0``:

    Q_t          = nf4(W - s * B_{t-1} A_{t-1})                  (quantize)
    U S V^T      = rank-r SVD of  W - dequant(Q_t)               (low-rank fit)
    s * B_t A_t  = U S V^T

With ``T = 1`` this is plain nf4 plus the best rank-r correction of its error;
more iterations let the quantizer absorb part of what the low-rank term cannot
express.

Why not peft's ``init_lora_weights="loftq"``: it moves every weight to
``"cuda"`` (or ``"xpu"``) unconditionally, so it fails on a CPU-only machine
(Olive's LoftQ pass inherits that). Here quantization is bitsandbytes'
``quantize_4bit`` / ``dequantize_4bit`` (CPU support since bitsandbytes 0.48) and
the SVD is ``torch.svd_lowrank`` (randomized; ~38x faster than a full SVD on a
768x3072 layer, same error), with a full SVD for small matrices.

Factor convention: as peft's ``loftq_init`` (``L = U sqrt(S)``, ``R = sqrt(S)
V^T``, ``lora_B = L``, ``lora_A = R``), but divided by ``sqrt(s)`` each, the way
peft's PiSSA initialisation divides ``S`` by the scaling. peft's LoftQ ignores
the scaling (peft issue #1982), so its initial adapter is exact only when
``alpha == r``; ours is exact for any ``alpha``.

The new master weight of a layer is ``dequant(Q_T)`` (peft replaces the base
weight with it; Olive saves it as the output ``model/``). Quantizing it to nf4
again with the same block size gives back ``Q_T`` exactly, since each block's
largest magnitude maps to the code +-1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import attrs

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

#: bitsandbytes' default block size, the one transformers' 4-bit loading uses.
BLOCKSIZE = 64


@attrs.frozen
class LoftQFactors:
    """The result of :func:`loftq_decompose` for one weight matrix ``W [out, in]``."""

    weight: "torch.Tensor"  # dequant(Q): the new master weight, [out, in], float32
    lora_A: "torch.Tensor"  # [r, in], float32
    lora_B: "torch.Tensor"  # [out, r], float32
    errors: tuple[float, ...]  # ||W - (dequant(Q_t) + s B_t A_t)||_F after each iteration
    nf4_error: float  # ||W - dequant(nf4(W))||_F: plain nf4, no adapter


def nf4_roundtrip(weight: "torch.Tensor", blocksize: int = BLOCKSIZE) -> "torch.Tensor":
    """``dequant(nf4(weight))`` with bitsandbytes, in float32, on ``weight``'s device."""
    import bitsandbytes.functional as bnbf
    import torch

    flat = weight.detach().to(torch.float32).contiguous()
    packed, state = bnbf.quantize_4bit(flat, blocksize=blocksize, quant_type="nf4")
    return bnbf.dequantize_4bit(packed, state, quant_type="nf4").reshape(weight.shape).to(torch.float32)


def low_rank(matrix: "torch.Tensor", rank: int, *, oversample: int = 8, power_iters: int = 4,
             seed: int = 0) -> tuple["torch.Tensor", "torch.Tensor"]:
    """``(L, R)`` with ``L @ R`` the best rank-``rank`` approximation of ``matrix``.

    ``L = U_r sqrt(S_r)`` ``[m, r]`` and ``R = sqrt(S_r) V_r^T`` ``[r, n]``.
    Randomized (``torch.svd_lowrank``, seeded so runs repeat) unless the matrix
    is small enough that a full SVD is as cheap. A ``rank`` above ``min(m, n)``
    (a small layer with a large LoRA rank) is padded with zeros.
    """
    import torch

    m, n = matrix.shape
    kept = min(rank, m, n)
    q = kept + oversample
    if 2 * q >= min(m, n):
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        v = vh.mT
    else:
        with torch.random.fork_rng(devices=[matrix.device] if matrix.device.type == "cuda" else []):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(matrix, q=q, niter=power_iters)
    root = s[:kept].sqrt()
    left, right = u[:, :kept] * root, root[:, None] * v[:, :kept].mT
    if kept < rank:
        left = torch.cat([left, left.new_zeros(m, rank - kept)], dim=1)
        right = torch.cat([right, right.new_zeros(rank - kept, n)], dim=0)
    return left, right


def loftq_decompose(weight: "torch.Tensor", rank: int, *, num_iter: int = 1, scaling: float = 1.0,
                    blocksize: int = BLOCKSIZE, seed: int = 0) -> LoftQFactors:
    """LoftQ for one weight matrix ``[out, in]`` (see the module docstring for the formula).

    ``scaling`` is the LoRA scaling the adapter will run with, so that
    ``scaling * lora_B @ lora_A`` is the low-rank correction.
    """
    import torch

    if num_iter < 1:
        raise ValueError(f"num_iter must be >= 1, got {num_iter}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if weight.ndim != 2:
        raise ValueError(f"LoftQ needs a 2-D weight, got shape {tuple(weight.shape)}")
    with torch.no_grad():
        w = weight.detach().to(torch.float32)
        correction = torch.zeros_like(w)
        errors = []
        nf4_error = None
        for _ in range(num_iter):
            dequantized = nf4_roundtrip(w - correction, blocksize)
            if nf4_error is None:
                nf4_error = float(torch.linalg.matrix_norm(w - dequantized))
            left, right = low_rank(w - dequantized, rank, seed=seed)
            correction = left @ right
            errors.append(float(torch.linalg.matrix_norm(w - dequantized - correction)))
        root = math.sqrt(scaling)
        return LoftQFactors(weight=dequantized, lora_A=(right / root).contiguous(), lora_B=(left / root).contiguous(),
                            errors=tuple(errors), nf4_error=nf4_error)


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor peft multiplies ``B A x`` by: ``alpha / r`` (``alpha / sqrt(r)`` for rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


@attrs.define
class LoftQReport:
    """What :func:`apply_loftq` did, for the manifest: layers done and skipped, and the errors.

    Errors are Frobenius norms over all LoftQ layers together, relative to ``||W||``.
    """

    layers: list[str] = attrs.field(factory=list)
    skipped: list[str] = attrs.field(factory=list)
    weight_sq: float = 0.0
    nf4_error_sq: float = 0.0
    loftq_error_sq: float = 0.0

    def add(self, name: str, weight: "torch.Tensor", factors: LoftQFactors) -> None:
        import torch

        self.layers.append(name)
        self.weight_sq += float(torch.linalg.matrix_norm(weight.to(torch.float32))) ** 2
        self.nf4_error_sq += factors.nf4_error ** 2
        self.loftq_error_sq += factors.errors[-1] ** 2

    @property
    def nf4_relative_error(self) -> float:
        return math.sqrt(self.nf4_error_sq / self.weight_sq) if self.weight_sq else 0.0

    @property
    def loftq_relative_error(self) -> float:
        return math.sqrt(self.loftq_error_sq / self.weight_sq) if self.weight_sq else 0.0


def apply_loftq(peft_model: "torch.nn.Module", *, num_iter: int = 1, adapter_name: str = "default",
                blocksize: int = BLOCKSIZE, seed: int = 0, device: "str | torch.device | None" = None,
                progress: Callable[[str, int, int], None] | None = None) -> LoftQReport:
    """LoftQ-initialise every LoRA layer of a full-precision peft model, in place.

    For each ``peft.tuners.lora.Linear`` whose base is an ``nn.Linear``, the
    base weight becomes ``dequant(Q)`` (the new master weight, in the base's
    dtype) and ``lora_A`` / ``lora_B`` the LoftQ factors for that layer's own
    rank and scaling (so ``rank_pattern``, ``alpha_pattern`` and rsLoRA are
    honoured). Other LoRA layers (embeddings, GPT-2's ``Conv1D``) are not
    quantized to nf4 by bitsandbytes the same way and keep peft's default
    initialisation; they are listed in ``skipped``. ``device`` is where the
    maths runs (default: CUDA when available, else the CPU).
    """
    import torch
    from peft.tuners.lora import Linear as LoraLinear, LoraLayer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    report = LoftQReport()
    layers = []
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.r:
            continue
        base = module.get_base_layer()
        if isinstance(module, LoraLinear) and type(base) is torch.nn.Linear and not module.fan_in_fan_out:
            layers.append((name, module, base))
        else:
            report.skipped.append(name)
    for index, (name, module, base) in enumerate(layers):
        if progress is not None:
            progress(name, index, len(layers))
        weight = base.weight.detach().to(device)
        factors = loftq_decompose(weight, module.r[adapter_name], num_iter=num_iter,
                                  scaling=module.scaling[adapter_name], blocksize=blocksize, seed=seed)
        report.add(name, weight, factors)
        with torch.no_grad():
            base.weight.copy_(factors.weight.to(base.weight.dtype))
            lora_a, lora_b = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
            lora_a.copy_(factors.lora_A.to(lora_a.dtype))
            lora_b.copy_(factors.lora_B.to(lora_b.dtype))
        del weight, factors
    return report
