"""Entry-point target of hostkit-echo: hookimpls only, no heavy imports."""

from __future__ import annotations

import time
from typing import Any

import attrs

from hostkit import DataTypeSpec, PassError, PassSpec, hookimpl
from hostkit_echo.config import EchoConfig, LinesData


def _count_lines(data: Any, name: str) -> int:
    with open(data.path) as fh:
        lines = fh.read().splitlines()
    if not isinstance(data, LinesData):
        return len(lines)
    kept = [line for line in lines if not (data.skip_blank and not line.strip())
            and not (data.comment and line.startswith(data.comment))]
    if len(kept) < data.min_lines:
        raise PassError(f"data.{name}.min_lines: {data.path} has {len(kept)} lines left, fewer than {data.min_lines}")
    return len(kept)


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(name="Echo", config_cls=EchoConfig, summary="write a message next to the model",
                                run=run_echo,
                                input_types=("HfModel", "OnnxModel", "PyTorchModel")))
    register.data_type(DataTypeSpec("lines", LinesData, "a text file, one example per line"))


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
        (context.output_dir / "lines.txt").write_text(str(_count_lines(data, config.train_data_config)))
    context.report_metric("lines", config.repeat)
    if hasattr(model, "path") and not getattr(model, "adapter_path", "x"):
        return attrs.evolve(model, adapter_path=str(context.output_dir))
    return model
