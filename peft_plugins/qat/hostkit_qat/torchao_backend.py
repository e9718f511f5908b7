"""backend = "torchao": torchao's ``QATConfig`` on the model's ``nn.Linear`` layers.

torchao QAT (https://docs.pytorch.org/ao/stable/workflows/qat.html): ``quantize_(model,
QATConfig(base, step="prepare"))`` swaps linears for fake-quantized ones, the
model trains, and ``step="convert"`` applies the base post-training config,
which stores the weights as torchao tensor subclasses (int8 storage, int4 values
for the int4 schemes) and quantizes activations on the fly.

Tested with torchao 0.18.0 on torch 2.13 (CPU). Only the base configs whose
fake-quantize settings torchao can infer and whose convert runs on CPU are
offered: ``Int8DynamicActivationIntxWeightConfig`` and ``IntxWeightOnlyConfig``
(``Int4WeightOnlyConfig`` needs an extra kernel package and fails here).

The converted model is saved as its state dict: ``torch.load(weights_only=True)``
reads torchao's tensor subclasses back (torchao registers them as safe globals),
and the architecture comes from the input's ``model_loader``. ``torch.export``
was not used: ``torch.export.load`` falls back to ``weights_only=False``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from hostkit import PassError

MODEL_FILE = "model_torchao.pt"


def base_config(scheme: str, group_size: int) -> Any:
    """The torchao post-training config behind a scheme name of :data:`hostkit_qat.config.TORCHAO_SCHEMES`."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "int8-dynamic-act-int4-weight":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    if scheme == "int8-dynamic-act-int8-weight":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if scheme == "int4-weight-only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    if scheme == "int8-weight-only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    raise PassError(f"scheme: unknown torchao scheme {scheme!r}")


class TorchaoBackend:
    """Prepare, convert and save with torchao's QATConfig."""

    name = "torchao"
    model_format = "torchao"

    def __init__(self, config: Any, rebuild: Any):
        self.config = config
        self.rebuild = rebuild  # () -> the float architecture (the input's model_loader)
        self.notes: dict[str, Any] = {}
        self._float_bytes = 0

    def prepare(self, model: Any) -> Any:
        try:
            import torchao
            from torchao.quantization import quantize_
            from torchao.quantization.qat import QATConfig
        except ImportError as exc:
            from hostkit.errors import MissingRequirement
            from hostkit_qat.plugin import TORCHAO_INSTALL

            raise MissingRequirement(f"backend: \"torchao\" needs torchao ({exc}): {TORCHAO_INSTALL}") from None
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise PassError("backend: torchao quantizes nn.Linear layers and the model has none; use backend = \"eager\"")
        if "int4" in self.config.scheme:
            bad = [f"{n} ({m.in_features})" for n, m in linears if m.in_features % self.config.group_size]
            if bad:
                raise PassError(f"group_size: {self.config.group_size} does not divide the input features of "
                                f"{', '.join(bad[:4])}")
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        self._float_bytes = buffer.getbuffer().nbytes
        self._base = base_config(self.config.scheme, self.config.group_size)
        self.notes.update(scheme=self.config.scheme, torchao_version=torchao.__version__,
                          quantized_linears=len(linears))
        model.train()
        quantize_(model, QATConfig(self._base, step="prepare"))
        return model

    def freeze(self, model: Any) -> None:
        """Nothing to freeze: torchao's fake quantizers compute their scales from each tensor."""

    def convert(self, model: Any) -> Any:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

        model = model.cpu().eval()
        quantize_(model, QATConfig(self._base, step="convert"))
        return model

    def save(self, model: Any, output_dir: Path, example: tuple | None) -> tuple[Path, Any]:
        """The converted state dict; returns the path and the module read back from it."""
        path = output_dir / MODEL_FILE
        torch.save(model.state_dict(), path)
        reloaded = self.rebuild()
        reloaded.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), assign=True)
        return path, reloaded.eval()

    def float_size(self, example: tuple | None) -> int:
        """Bytes of the float state dict saved the same way (torch.save)."""
        return self._float_bytes
