"""Building the float ``nn.Module`` of a ``PyTorchModel`` handle, and loading what the pass saved.

A ``PyTorchModel`` input is ``user_script`` + ``model_loader`` (which builds the
module and receives ``model_path``, or ``None``) plus optional weights in
``model_path``. The weights are read here with safe readers only: safetensors,
or ``torch.load(weights_only=True)`` for a state dict. Whole pickled modules are
never loaded: a file that needs arbitrary unpickling is refused.

:func:`load_model` is the public way to use the pass's output in Python:
TorchScript for the eager back-end, a torchao state dict plus the same
``model_loader`` for the torchao back-end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hostkit import PassError, PyTorchModel
from hostkit.errors import MissingRequirement
from hostkit.scripts import load_function

SAFETENSORS_INSTALL = "pip install 'hostkit-qat[safetensors]'"


def call_loader(handle: PyTorchModel, path: str | None) -> Any:
    import torch

    if not handle.user_script or not handle.model_loader:
        missing = "user_script" if not handle.user_script else "model_loader"
        raise PassError(f"model.{missing}: a PyTorchModel for QuantizationAwareTraining needs user_script and "
                        "model_loader (a function returning the float torch.nn.Module)")
    loader = load_function(handle.user_script, handle.model_loader, "model.model_loader", "model.user_script")
    module = loader(path)
    if not isinstance(module, torch.nn.Module):
        raise PassError(f"model.model_loader: {handle.model_loader}() returned {type(module).__name__}, "
                        "expected a torch.nn.Module")
    return module


def read_state_dict(path: str, model_format: str, option: str = "model.model_path") -> dict[str, Any]:
    """A state dict from safetensors or a ``weights_only`` torch file; never arbitrary unpickling."""
    import pickle

    import torch

    if not Path(path).is_file():
        raise PassError(f"{option}: {path} does not exist")
    if model_format == "safetensors" or path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingRequirement(f"{option}: reading safetensors needs the safetensors package: {SAFETENSORS_INSTALL}") from None
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise PassError(f"{option}: cannot read {path} as safetensors: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PassError(f"{option}: {path} is not a plain state dict (torch.load(weights_only=True) refused it: "
                        f"{str(exc).splitlines()[0]}); save model.state_dict() or safetensors: hostkit never "
                        "unpickles whole modules") from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise PassError(f"{option}: cannot read {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PassError(f"{option}: {path} holds a {type(state).__name__}, expected a state dict (name -> tensor)")
    return state


def build_float_model(handle: PyTorchModel) -> Any:
    """The float module to train: ``model_loader(model_path)`` with ``model_path``'s weights loaded safely."""
    if handle.model_format in ("torchscript", "torchao"):
        raise PassError(f"model.model_format: QuantizationAwareTraining trains a float model (state_dict or "
                        f"safetensors weights), got {handle.model_format!r}")
    module = call_loader(handle, handle.model_path)
    if handle.model_path:
        state = read_state_dict(handle.model_path, handle.model_format)
        result = module.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            parts = []
            if result.missing_keys:
                parts.append(f"missing {', '.join(result.missing_keys[:5])}")
            if result.unexpected_keys:
                parts.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
            raise PassError(f"model.model_path: the weights do not fit the module {handle.model_loader}() returns "
                            f"({'; '.join(parts)})")
    return module


def load_model(handle: PyTorchModel | dict[str, Any]) -> Any:
    """Load a PyTorchModel handle (or its JSON from the manifest) as a module in eval mode, on CPU.

    ``torchscript``: ``torch.jit.load`` (no Python unpickling). ``torchao``:
    ``model_loader(None)`` builds the architecture, torchao's tensor subclasses
    are read with ``torch.load(weights_only=True)`` and assigned. ``state_dict``
    and ``safetensors``: as the pass reads its input.
    """
    import torch

    from hostkit_qat.capture import Captured

    if isinstance(handle, dict):
        from hostkit import handles

        handle = handles.from_json(handle)
    captured = Captured()
    with captured.block():
        if handle.model_format == "torchscript":
            module = torch.jit.load(handle.model_path, map_location="cpu")
        elif handle.model_format == "torchao":
            import torchao  # noqa: F401 - registers its tensor subclasses as safe globals for torch.load

            module = call_loader(handle, None)
            state = torch.load(handle.model_path, map_location="cpu", weights_only=True)
            module.load_state_dict(state, assign=True)
        else:
            module = build_float_model(handle)
    return module.eval()
