"""The QuantizationAwareTraining pass: build, prepare, train, convert, save, measure.

Imported only when a step runs (it imports torch). The steps, for both back-ends:

1. build the float model from the ``PyTorchModel`` handle (safe weight readers only);
2. ``prepare``: fake-quantize it (eager: fuse + stubs + ``prepare_qat``; torchao: ``QATConfig`` prepare);
3. train it in one of the three modes; the first forward call's inputs are kept
   as example inputs for tracing;
4. freeze, measure the fake-quantized model on ``val_data_config``;
5. ``convert`` to the real low-bit model and save it; the saved file is read
   back and compared with the in-memory model before the step completes;
6. report the final training loss, validation accuracy and saved sizes.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from hostkit import PassError, PyTorchModel
from hostkit.scripts import load_object
from hostkit_qat.capture import Captured
from hostkit_qat.config import QuantizationAwareTrainingConfig
from hostkit_qat.models import build_float_model, call_loader
from hostkit_qat.training import Batches, _Checkpoints, accuracy, default_loop, lightning_fit, logits_of, user_loop

EXAMPLE_ROWS = 8


class _ExampleRecorder:
    """Keeps the (args, kwargs) of the model's first forward call, cut to a few rows, on CPU."""

    def __init__(self, model: Any):
        self.example: tuple | None = None
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    @staticmethod
    def _cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            return (value[:EXAMPLE_ROWS] if value.dim() else value).cpu().clone()
        if isinstance(value, (list, tuple)):
            return type(value)(_ExampleRecorder._cut(v) for v in value)
        if isinstance(value, dict):
            return {k: _ExampleRecorder._cut(v) for k, v in value.items()}
        return value

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.example is None:
            self.example = (self._cut(tuple(args)), self._cut(dict(kwargs)))

    def remove(self) -> None:
        self._handle.remove()


def _saved_bytes(state_dict: dict[str, Any]) -> int:
    """Bytes of ``torch.save(state_dict)``: the weights alone, without TorchScript's code and debug tables."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getbuffer().nbytes


def _seed(seed: int | None) -> None:
    if seed is None:
        return
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _user_objects(config: QuantizationAwareTrainingConfig, model: PyTorchModel,
                  callable_only: bool = True) -> Callable[[str, str], Any]:
    """``load(name, option)``: an object of the pass's user_script (default: the [model]'s), errors naming ``option``."""
    script = config.user_script or model.user_script

    def load(name: str, option: str) -> Any:
        if not script:
            raise PassError(f"user_script: {option} needs a user_script (set it in the pass or in [model])")
        script_option = "user_script" if config.user_script else "model.user_script"
        obj = load_object(script, name, option, script_option)
        if callable_only and not callable(obj):
            raise PassError(f"{option}: {name!r} in {Path(script).name} is not a class or function")
        return obj

    return load


def _run_example(module: Any, example: tuple) -> Any:
    args, kwargs = example
    with torch.no_grad():
        return logits_of(module(*args, **kwargs))


def run_qat(config: QuantizationAwareTrainingConfig, model: PyTorchModel, context: Any) -> PyTorchModel:
    if getattr(context.run, "world_size", 1) > 1:
        raise PassError("QuantizationAwareTraining trains in a single process: run it without torchrun")
    out_dir = Path(context.output_dir)
    captured = Captured()
    user_function = _user_objects(config, model)
    mode = config.mode
    if mode is None:  # validation catches this; keep the pass safe when called directly
        raise PassError("choose a training mode: training_loop_func, ptl_module or train_data_config")

    # data first: a bad data config fails before any training
    train_batches = val_batches = None
    if mode == "default":
        train_batches = Batches(context.data_config(config.train_data_config), config.train_data_config,
                                "train_data_config", shuffle_each_epoch=True, seed=config.seed)
    if config.validate and config.val_data_config:
        val_batches = Batches(context.data_config(config.val_data_config), config.val_data_config,
                              "val_data_config", shuffle_each_epoch=False, seed=config.seed)

    _seed(config.seed)
    float_model = build_float_model(model)
    float_weights_bytes = _saved_bytes(float_model.state_dict())
    with captured.block():
        if config.backend == "torchao":
            from hostkit_qat.torchao_backend import TorchaoBackend

            backend: Any = TorchaoBackend(config, rebuild=lambda: call_loader(model, None))
        else:
            from hostkit_qat.eager import EagerBackend

            backend = EagerBackend(config, user_function)
        prepared = backend.prepare(float_model)
    context.progress("prepared for quantization-aware training")

    recorder = _ExampleRecorder(prepared)
    checkpoint_dir = Path(config.checkpoint_path) if config.checkpoint_path else out_dir / "checkpoints"
    results: dict[str, Any] = {}
    try:
        with captured.block():
            if mode == "training_loop_func":
                func = user_function(config.training_loop_func, "training_loop_func")
                trained, results = user_loop(prepared, func, config.training_loop_func)
            elif mode == "ptl_module":
                module_factory = user_function(config.ptl_module, "ptl_module")
                data_factory = (user_function(config.ptl_data_module, "ptl_data_module")
                                if config.ptl_data_module else None)
                root = checkpoint_dir if config.checkpoint_path else out_dir / "lightning"
                trained, results = lightning_fit(
                    prepared, module_factory, config.ptl_module, data_factory, config.ptl_data_module,
                    num_epochs=config.num_epochs, num_steps=config.num_steps, root_dir=root,
                    checkpointing=bool(config.checkpoint_path),
                    validate=config.validate and not config.val_data_config, report=context.report_metric)
            else:
                results = default_loop(
                    prepared, train_batches, num_epochs=config.num_epochs, num_steps=config.num_steps,
                    learning_rate=config.learning_rate, report=context.report_metric, progress=context.progress,
                    checkpoints=_Checkpoints(checkpoint_dir, context.record.key))
                trained = prepared
    finally:
        recorder.remove()
    if not isinstance(trained, torch.nn.Module):
        trained = prepared
    example = recorder.example

    try:
        with captured.block():
            trained = trained.cpu()
            backend.freeze(trained)
            if val_batches is not None:
                context.report_metric("val_accuracy_fake_quant", round(accuracy(trained, val_batches), 6))
            converted = backend.convert(trained)
            quantized_weights_bytes = _saved_bytes(converted.state_dict())
            path, saved = backend.save(converted, out_dir, example)
            float_bytes = backend.float_size(example)
            if example is not None:
                expected, got = _run_example(converted, example), _run_example(saved, example)
                if not torch.equal(expected.argmax(-1), got.argmax(-1)):
                    raise PassError(f"the saved model ({path.name}) does not reproduce the converted model's predictions")
                context.note(saved_vs_converted_max_abs_diff=float((expected.float() - got.float()).abs().max()))
            if val_batches is not None:
                context.report_metric("val_accuracy", round(accuracy(saved, val_batches), 6))
    except NotImplementedError as exc:  # an op with no quantized kernel met a quantized tensor
        if "Quantized" not in str(exc):
            raise
        hint = (" (quant_stubs = \"modules\" keeps every op but conv/linear in float)"
                if backend.notes.get("quant_stubs") in ("model", "none") else "")
        raise PassError(f"quant_stubs: the converted model runs an operation that has no quantized kernel: "
                        f"{str(exc).splitlines()[0]}{hint}") from exc

    quantized_bytes = path.stat().st_size
    for name in ("final_train_loss",):
        if results.get(name) is not None:
            context.report_metric(name, round(results[name], 6))
    for name, value in results.items():
        if name.startswith("lightning_"):
            context.report_metric(name, value)
    if results.get("steps") is not None:
        context.report_metric("train_steps", results["steps"])
    context.report_metric("float_model_bytes", float_bytes)
    context.report_metric("quantized_model_bytes", quantized_bytes)
    context.report_metric("size_ratio", round(quantized_bytes / float_bytes, 4) if float_bytes else None)
    context.report_metric("float_weights_bytes", float_weights_bytes)
    context.report_metric("quantized_weights_bytes", quantized_weights_bytes)
    context.report_metric("weights_ratio", round(quantized_weights_bytes / float_weights_bytes, 4))
    notes = {"mode": mode, "backend": backend.name, **backend.notes}
    if example is not None:
        notes["example_input_shapes"] = [list(a.shape) for a in example[0] if isinstance(a, torch.Tensor)]
    if results.get("resumed_from_epoch") is not None:
        notes["resumed_from_epoch"] = results["resumed_from_epoch"]
    if captured.messages:
        notes["library_warnings"] = captured.as_notes()
    context.note(**notes)
    (out_dir / "quantization.json").write_text(json.dumps({
        "backend": backend.name, "model_file": path.name, "model_format": backend.model_format,
        "torch_version": torch.__version__, **{k: v for k, v in notes.items() if k != "library_warnings"},
    }, indent=2, default=str))

    if not config.checkpoint_path:
        for leftover in ("checkpoints", "lightning"):
            shutil.rmtree(out_dir / leftover, ignore_errors=True)

    if backend.model_format == "torchao":
        return PyTorchModel(model_path=str(path), user_script=model.user_script, model_loader=model.model_loader,
                            model_format="torchao", io_config=dict(model.io_config))
    return PyTorchModel(model_path=str(path), model_format="torchscript", io_config=dict(model.io_config))
