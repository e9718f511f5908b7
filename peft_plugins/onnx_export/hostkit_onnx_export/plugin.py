"""Entry-point target of hostkit-onnx-export: hookimpls only, no heavy imports."""

from __future__ import annotations

from typing import Any

from hostkit import PassSpec, Requirements, hookimpl
from hostkit_onnx_export.config import OnnxConversionConfig

EXPORTER = "OnnxConversion"


def _check(config: OnnxConversionConfig, context: Any) -> list[str]:
    problems = []
    if config.exporter == "dynamo" and config.target_opset < 18:
        problems.append(f"target_opset: the dynamo exporter needs opset >= 18, got {config.target_opset} "
                        "(or use exporter = \"torchscript\")")
    if config.exporter == "torchscript" and config.target_opset > 20:
        problems.append(f"target_opset: the torchscript exporter supports opsets up to 20, got {config.target_opset}")
    if config.with_past and not config.use_position_ids:
        problems.append("with_past: a KV-cache model needs use_position_ids = true")
    model = getattr(context, "model", None)
    if config.with_past and getattr(model, "task", "text-generation") != "text-generation":
        problems.append(f"with_past: needs a text-generation model, the model is {model.task}")
    return problems


def run_export(config: OnnxConversionConfig, model: Any, context: Any) -> Any:
    from hostkit_onnx_export.export import export_onnx  # torch, onnx: only when the pass runs

    return export_onnx(model, config, context.output_dir, context)


@hookimpl
def hostkit_register(register: Any) -> None:
    register.exporter(PassSpec(
        name=EXPORTER,
        config_cls=OnnxConversionConfig,
        run=run_export,
        summary="export an HfModel to ONNX; an unmerged LoRA adapter stays as weights named by the adapter contract",
        requires=Requirements(modules={"torch": "torch>=2.2", "transformers": "transformers>=4.45",
                                       "peft": "peft>=0.13", "onnx": "onnx>=1.16", "onnxscript": "onnxscript>=0.3"},
                              gpu="no", notes="check_outputs = true also needs onnxruntime"),
        input_types=("HfModel",),
        output_type="OnnxModel",
        check=_check,
    ))
