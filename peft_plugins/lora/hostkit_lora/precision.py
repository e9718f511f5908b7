"""Which precision a LoRA pass trains in when ``torch_dtype`` is left to auto.

On a CUDA GPU: bfloat16 weights (Olive's default). On a CPU it depends on the
CPU: with native bf16 instructions (x86 ``avx512_bf16`` or AMX ``amx_bf16``,
Arm ``bf16``) bf16 matmuls run about twice as fast as fp32 (issue 14:
SmolLM2-135M, 1.05 vs 1.90 s/step on an AVX-512 BF16 CPU), so the base stays in
float32 and the Trainer's bf16 autocast runs the matmuls in bf16 (float32
master weights, optimizer state and loss: mixed precision, as accurate as
fp32 training in practice). Without them (AVX2-only CPUs) bf16 is emulated and
15-35x slower: float32, no autocast.

Where the flags promise native bf16, a short probe (two matmuls of the model's
width, ~20 ms) confirms that bf16 is actually faster with this torch build
before it is chosen. The flags alone do not: on one Xeon with ``avx512_bf16``
(torch 2.13, oneDNN's native ``brg_matmul:avx512_core_bf16``) bf16 matmuls ran
at 0.57-0.69x of fp32 and SmolLM2 trained at 0.6x, so the probe keeps fp32
there (bench/RESULTS.md, bench_train). The choice and its reason go in the manifest
(``notes.precision``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import attrs

#: /proc/cpuinfo flags meaning the CPU computes bf16 natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: bf16 must beat fp32 by this factor in the probe to be chosen.
MIN_SPEEDUP = 1.2


@attrs.frozen
class Precision:
    """What to train in: the dtype the weights load in, whether bf16 autocast runs, and why."""

    dtype: str
    bf16_autocast: bool
    reason: str


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags (x86 ``flags``, Arm ``Features``) of /proc/cpuinfo, or of the text given."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_capability() -> str:
    """torch's name for the vector ISA its CPU kernels use here (AVX2, AVX512, ...)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def bf16_speedup(width: int, rows: int = 256, repeats: int = 3) -> float:
    """How many times faster a ``rows x width x width`` matmul runs under CPU bf16 autocast than in fp32."""
    import torch

    a, b = torch.randn(rows, width), torch.randn(width, width)

    def best(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    def low() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    return best(lambda: a @ b) / max(best(low), 1e-9)


def choose_cpu_precision(flags: set[str], capability: str,
                         speedup: Callable[[], float] | None = None) -> Precision:
    """The automatic CPU choice from the CPU's flags (and, where they promise native bf16, a measured speedup)."""
    native = sorted(f for f in NATIVE_BF16_FLAGS if f in flags)
    if not native:
        return Precision("float32", False, f"float32: this CPU ({capability}) has no native bf16 "
                                           f"({'/'.join(NATIVE_BF16_FLAGS[:2])}), where bf16 is 15-35x slower")
    if speedup is not None:
        factor = speedup()
        if factor < MIN_SPEEDUP:
            return Precision("float32", False, f"float32: the CPU has {', '.join(native)} but a bf16 matmul ran only "
                                               f"{factor:.2f}x as fast as fp32 here (needs {MIN_SPEEDUP}x)")
        measured = f", bf16 matmul {factor:.2f}x faster than fp32"
    else:
        measured = ""
    return Precision("float32", True, f"float32 weights + bf16 autocast: the CPU ({capability}) has "
                                      f"{', '.join(native)}{measured}")


def auto_precision(*, use_gpu: bool, width: int | None = None) -> Precision:
    """The precision of a pass whose ``torch_dtype`` is auto, on this machine."""
    if use_gpu:
        return Precision("bfloat16", False, "bfloat16: a CUDA GPU")
    probe = (lambda: bf16_speedup(width)) if width else None
    return choose_cpu_precision(cpu_flags(), cpu_capability(), probe)


__all__ = ["Precision", "auto_precision", "bf16_speedup", "choose_cpu_precision", "cpu_capability", "cpu_flags"]
