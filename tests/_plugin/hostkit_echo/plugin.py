"""Entry-point target of hostkit-echo: hookimpls only, no heavy imports."""

from __future__ import annotations

import time
from typing import Any

import attrs

from hostkit import PassError, PassSpec, hookimpl
from hostkit_echo.config import EchoConfig


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(name="Echo", config_cls=EchoConfig, summary="write a message next to the model",
                                run=run_echo,
                                input_types=("HfModel", "OnnxModel", "PyTorchModel")))


def run_echo(config: EchoConfig, model: Any, context: Any) -> Any:
    if config.fail == "expected":
        raise PassError("asked to fail (fail = 'expected')")
    if config.fail == "bug":
        raise RuntimeError("a bug on purpose")
    for i in range(config.repeat):
        context.progress("echoing", i + 1, config.repeat)
        context.report_metric("echo_loss", 1.0 / (i + 1), step=i + 1)
        if config.sleep_s:
            time.sleep(config.sleep_s)
    text = config.message.upper() if config.mode == "upper" else config.message
    (context.output_dir / "echo.txt").write_text((text + "\n") * config.repeat)
    if config.train_data_config:
        data = context.data_config(config.train_data_config)
        with open(data.path) as fh:
            (context.output_dir / "lines.txt").write_text(str(sum(1 for _ in fh)))
    context.report_metric("lines", config.repeat)
    if hasattr(model, "path") and not getattr(model, "adapter_path", "x"):
        return attrs.evolve(model, adapter_path=str(context.output_dir))
    return model
