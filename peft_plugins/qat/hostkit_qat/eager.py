"""backend = "eager": ``torch.ao.quantization`` eager-mode QAT, static int8 for CPU.

Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference" (CVPR 2018, https://arxiv.org/abs/1712.05877);
PyTorch's recipe: https://pytorch.org/docs/stable/quantization.html#quantization-aware-training-for-static-quantization

1. fuse ``modules_to_fuse`` (conv+bn+relu, linear+relu, ...) with ``fuse_modules_qat``;
2. place QuantStub/DeQuantStub (``quant_stubs``): around every conv/linear
   (Olive's way: any model works, float ops stay float), or once around the model;
3. ``prepare_qat`` with the QConfig (``qconfig_func`` or the engine's default):
   weights and activations are fake-quantized while the model trains;
4. after training: observers off, ``convert`` to quantized modules (int8
   weights, int8 activations between quantized ops) and save TorchScript.

``torch.ao.quantization`` is deprecated upstream (torch 2.10+ points to
torchao) but still ships and works in torch 2.13; its warnings are captured
by :mod:`hostkit_qat.capture`, not silenced.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any, Callable

import torch
import torch.ao.quantization as tq

from hostkit import PassError

MODEL_FILE = "model.pt"


def _has_path(module: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(module, part):
            return False
        module = getattr(module, part)
    return True


def fuse(model: Any, groups: list[list[str]]) -> list[str]:
    """Fuse each group in every module that has all of its names (Olive applied groups recursively).

    Returns the fused groups as ``"path: a+b+c"`` strings; a group that matches
    no module is an error naming it.
    """
    fused = []
    for index, group in enumerate(groups):
        owners = [(name, module) for name, module in model.named_modules()
                  if all(_has_path(module, part) for part in group)]
        if not owners:
            children = ", ".join(n for n, _ in list(model.named_modules())[1:12])
            raise PassError(f"modules_to_fuse[{index}]: no module has all of {', '.join(group)} "
                            f"(submodules: {children}, ...)")
        for name, module in owners:
            try:
                tq.fuse_modules_qat(module, [group], inplace=True)
            except (AssertionError, NotImplementedError, RuntimeError) as exc:
                kinds = "+".join(type(module.get_submodule(p)).__name__ for p in group)
                raise PassError(f"modules_to_fuse[{index}]: cannot fuse {kinds} in {name or 'the model'}: {exc}") from exc
            fused.append(f"{name or '<model>'}: {'+'.join(group)}")
    return fused


class QuantizedModule(torch.nn.Module):
    """QuantStub -> module -> DeQuantStub: the module runs quantized, its neighbours stay float."""

    def __init__(self, module: Any):
        super().__init__()
        self.quant = tq.QuantStub()
        self.module = module
        self.dequant = tq.DeQuantStub()

    def forward(self, x: Any) -> Any:
        return self.dequant(self.module(self.quant(x)))


def _quantizable_types() -> tuple[type, ...]:
    """Module types ``prepare_qat`` swaps for QAT modules: convolutions, linears and their fusions."""
    from torch.ao.quantization.quantization_mappings import get_default_qat_module_mappings

    return tuple(get_default_qat_module_mappings())


def wrap_modules(model: Any, qconfig: Any) -> int:
    """Wrap every quantizable leaf in QuantStub/DeQuantStub with ``qconfig``; returns how many."""
    kinds = _quantizable_types()
    count = 0

    def visit(parent: Any) -> None:
        nonlocal count
        for name, child in list(parent.named_children()):
            if isinstance(child, kinds):
                wrapped = QuantizedModule(child)
                wrapped.qconfig = qconfig
                setattr(parent, name, wrapped)
                count += 1
            else:
                visit(child)

    if isinstance(model, kinds):
        raise PassError("quant_stubs: the model is a single layer; use quant_stubs = \"model\"")
    visit(model)
    return count


def _has_quant_stub(model: Any) -> bool:
    return any(isinstance(m, torch.ao.quantization.QuantStub) for m in model.modules())


class EagerBackend:
    """Prepare, convert and save with ``torch.ao.quantization`` (eager mode)."""

    name = "eager"
    model_format = "torchscript"

    def __init__(self, config: Any, load_user_function: Callable[[str, str], Callable[..., Any]]):
        self.config = config
        self.load_user_function = load_user_function
        self.notes: dict[str, Any] = {}
        self._float_model: Any = None

    def prepare(self, model: Any) -> Any:
        if self.config.engine not in torch.backends.quantized.supported_engines:
            raise PassError(f"engine: {self.config.engine!r} is not available in this torch build "
                            f"(supported: {', '.join(torch.backends.quantized.supported_engines)})")
        torch.backends.quantized.engine = self.config.engine
        self._float_model = copy.deepcopy(model).eval()
        model.train()
        if self.config.modules_to_fuse:
            self.notes["fused"] = fuse(model, self.config.modules_to_fuse)
        qconfig = self._qconfig()
        stubs = self.config.quant_stubs
        if stubs == "auto":
            stubs = "none" if _has_quant_stub(model) else "modules"
        if stubs == "modules":
            if wrap_modules(model, qconfig) == 0:
                raise PassError("quant_stubs: the model has no convolution or linear layer to quantize")
        elif stubs == "model":
            model = tq.QuantWrapper(model)
            model.qconfig = qconfig
        else:
            if not _has_quant_stub(model):
                raise PassError("quant_stubs: \"none\" needs a model with its own QuantStub/DeQuantStub")
            model.qconfig = qconfig
        self.notes["quant_stubs"] = stubs
        return tq.prepare_qat(model, inplace=True)

    def _qconfig(self) -> Any:
        if not self.config.qconfig_func:
            self.notes["qconfig"] = f"get_default_qat_qconfig({self.config.engine!r})"
            return tq.get_default_qat_qconfig(self.config.engine)
        func = self.load_user_function(self.config.qconfig_func, "qconfig_func")
        qconfig = func()
        if not isinstance(qconfig, tq.QConfig):
            raise PassError(f"qconfig_func: {self.config.qconfig_func}() returned {type(qconfig).__name__}, "
                            "expected a torch.ao.quantization.QConfig")
        self.notes["qconfig"] = f"{self.config.qconfig_func}() from user_script"
        return qconfig

    def freeze(self, model: Any) -> None:
        """Observers off (quantization parameters fixed) and batch-norm statistics frozen."""
        import torch.ao.nn.intrinsic.qat as nniqat

        model.apply(tq.disable_observer)
        model.apply(nniqat.freeze_bn_stats)

    def convert(self, model: Any) -> Any:
        model = model.cpu().eval()
        model.apply(tq.disable_observer)
        return tq.convert(model, inplace=False)

    def _torchscript(self, model: Any, example: tuple | None) -> tuple[Any, str]:
        if example is not None:
            args, kwargs = example
            with torch.no_grad():
                if kwargs and not args:
                    return torch.jit.trace(model, example_kwarg_inputs=kwargs, check_trace=False), "trace"
                return torch.jit.trace(model, args, check_trace=False), "trace"
        try:
            return torch.jit.script(model), "script"
        except Exception as exc:  # noqa: BLE001 - TorchScript raises many error types
            raise PassError(f"cannot save the converted model as TorchScript: the model never ran during training "
                            f"(no example inputs to trace) and torch.jit.script failed: {str(exc).splitlines()[0]}") from exc

    def save(self, model: Any, output_dir: Path, example: tuple | None) -> tuple[Path, Any]:
        """Save TorchScript (as Olive did); returns the path and the reloadable module."""
        scripted, how = self._torchscript(model, example)
        self.notes["torchscript"] = how
        path = output_dir / MODEL_FILE
        torch.jit.save(scripted, str(path))
        return path, scripted

    def float_size(self, example: tuple | None) -> int:
        """Bytes of the float model saved the same way (TorchScript), for the size ratio."""
        buffer = io.BytesIO()
        try:
            scripted, _ = self._torchscript(self._float_model, example)
            torch.jit.save(scripted, buffer)
        except Exception:  # noqa: BLE001 - fall back to the float weights alone
            buffer = io.BytesIO()
            torch.save(self._float_model.state_dict(), buffer)
        return buffer.getbuffer().nbytes
