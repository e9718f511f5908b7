"""Entry-point target of hostkit-qat: hookimpls and validation only.

Nothing here imports torch, pytorch-lightning or torchao: the pass itself
lives in :mod:`hostkit_qat.run` and is imported only when a step runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import attrs

from hostkit import PassSpec, PyTorchModel, Requirements, hookimpl
from hostkit_qat.config import QuantizationAwareTrainingConfig
from hostkit_qat.data import TensorData, data_type_specs

PASS_TYPE = "QuantizationAwareTraining"
LIGHTNING_INSTALL = "pip install 'hostkit-qat[lightning]'"
TORCHAO_INSTALL = "pip install 'hostkit-qat[torchao]'"
EAGER_ONLY = ("modules_to_fuse", "qconfig_func")
TORCHAO_ONLY = ("scheme", "group_size")


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def lightning_available() -> bool:
    return module_available("pytorch_lightning") or module_available("lightning")


def _is_set(config: QuantizationAwareTrainingConfig, name: str) -> bool:
    """Whether option ``name`` differs from its default (i.e. the run file or plugins.toml set it)."""
    return getattr(config, name) != attrs.fields_dict(type(config))[name].default


def check(config: QuantizationAwareTrainingConfig, context: Any) -> list[str]:
    """Problems of a QAT step that can be found without importing torch (``"<option>: <message>"``)."""
    problems: list[str] = []
    modes = [name for name in ("training_loop_func", "ptl_module", "train_data_config") if getattr(config, name)]
    if not modes:
        problems.append(" choose a training mode: training_loop_func (a), ptl_module (b), "
                        "or train_data_config with num_epochs (c)")
    elif len(modes) > 1:
        problems.append(f"{modes[1]}: cannot be combined with {modes[0]} (one training mode per pass)")
    mode = config.mode

    if config.ptl_data_module and not config.ptl_module:
        problems.append("ptl_data_module: needs ptl_module")
    if mode in ("ptl_module", "default") and config.num_epochs is None and config.num_steps is None:
        problems.append(f"num_epochs: required with {modes[0]} (or set num_steps)")
    if mode == "training_loop_func":
        for name in ("num_epochs", "num_steps", "learning_rate"):
            if _is_set(config, name):
                problems.append(f"{name}: not used by training_loop_func (your function decides how it trains)")
    if mode == "ptl_module" and _is_set(config, "learning_rate"):
        problems.append("learning_rate: not used by ptl_module (the LightningModule's configure_optimizers decides)")

    # the user script
    model = getattr(context, "model", None)
    script = config.user_script or (model.user_script if isinstance(model, PyTorchModel) else None)
    needs_script = [n for n in ("training_loop_func", "ptl_module", "ptl_data_module", "qconfig_func") if getattr(config, n)]
    if needs_script and not script:
        problems.append(f"user_script: {needs_script[0]} needs a user_script (set it here or in [model])")
    if config.user_script and not Path(config.user_script).exists():
        problems.append(f"user_script: {config.user_script} does not exist")

    if mode == "ptl_module" and not lightning_available():
        problems.append(f"ptl_module: needs PyTorch Lightning, which is not installed: {LIGHTNING_INSTALL}")

    # back-end specific options
    if config.backend == "torchao":
        if not module_available("torchao"):
            problems.append(f"backend: \"torchao\" needs torchao, which is not installed: {TORCHAO_INSTALL}")
        for name in EAGER_ONLY:
            if getattr(config, name):
                problems.append(f"{name}: only used by backend = \"eager\"")
        for name in ("quant_stubs", "engine"):
            if _is_set(config, name):
                problems.append(f"{name}: only used by backend = \"eager\"")
    else:
        for name in TORCHAO_ONLY:
            if _is_set(config, name):
                problems.append(f"{name}: only used by backend = \"torchao\"")
        for i, group in enumerate(config.modules_to_fuse or []):
            if len(group) < 2:
                problems.append(f"modules_to_fuse[{i}]: a group needs at least two module names, got {group!r}")

    # validation
    if config.do_validate and not config.val_data_config and not (mode == "ptl_module" and config.ptl_data_module):
        problems.append("do_validate: needs val_data_config (or ptl_data_module with a val_dataloader in mode b)")
    if config.do_validate is False and config.val_data_config:
        problems.append("val_data_config: set, but do_validate = false")

    # data configs hold tensors
    data = getattr(context, "data", {}) or {}
    for option in ("train_data_config", "val_data_config"):
        name = getattr(config, option)
        cfg = data.get(name) if name else None
        if cfg is None:
            continue  # unknown names are reported by the host
        if not isinstance(cfg, TensorData):
            problems.append(f"{option}: data.{name} has type {cfg.type!r}; QuantizationAwareTraining reads "
                            f"(inputs, labels) tensors: type \"npz\" or \"user_script\"")
        elif cfg.type == "npz":
            missing = [f for f in ("input_field", "label_field") if not getattr(cfg, f)]
            if missing:
                problems.append(f"{option}: data.{name} (npz) needs {' and '.join(missing)}")
    return problems


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(
        name=PASS_TYPE,
        config_cls=QuantizationAwareTrainingConfig,
        run="hostkit_qat.run:run_qat",
        summary="train with fake-quantized weights and activations, then convert to int8/int4 (arXiv:1712.05877)",
        requires=Requirements(modules={"torch": "torch>=2.2"}, gpu="no",
                              notes="eager back-end output runs on CPU (x86/fbgemm); Lightning and torchao are extras"),
        input_types=("PyTorchModel",),
        output_type="PyTorchModel",
        check=check,
    ))
    for spec in data_type_specs():
        register.data_type(spec)
