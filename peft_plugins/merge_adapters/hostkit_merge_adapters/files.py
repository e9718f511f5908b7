"""Who is to blame when a file goes wrong: the user's input, or the machine's disk.

transformers, peft and safetensors report a truncated, random or empty weights file as their own
error types (``SafetensorError: Error while deserializing header: ...``) with no file name, and a
full disk while saving as ``SafetensorError: Error while serializing: I/O error: ... (os error 28)``.
The host would call either a bug in the plugin. This module classifies at the boundary:

* :func:`check_model_folder` / :func:`read_adapter_config` / :func:`check_adapter_folder` read
  what a merge is about to load (config JSON, each safetensors header: cheap, the tensors are not
  read) and raise :class:`hostkit.PassError` naming the file and what is wrong with it;
* :func:`writing_to` turns an I/O failure while saving into an ``OSError`` with its errno and the
  path being written, which the host reports as the machine's error, naming the step.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from hostkit import PassError

_OS_ERROR = re.compile(r"os error (\d+)")


def _json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PassError(f"{path}: not a {what}: not UTF-8 text") from None
    except ValueError as exc:
        raise PassError(f"{path}: not a {what}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PassError(f"{path}: not a {what}: expected a JSON object, got {type(data).__name__} {json.dumps(data)[:40]}")
    return data


def check_safetensors(path: Path) -> None:
    """Raise PassError when ``path`` is not a complete safetensors file (header and sizes only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: the file is at fault
        size = path.stat().st_size
        reason = str(exc).removeprefix("Error while deserializing header: ")
        raise PassError(f"{path}: cannot read as safetensors ({reason}; {size} bytes): "
                        "the file is truncated or corrupt; copy or save it again") from None


def check_model_folder(folder: str | Path) -> None:
    """The base model folder a merge loads: ``config.json`` is a JSON object, each safetensors file is whole.

    A hub id (no such folder) is left to transformers.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    if (folder / "config.json").is_file():
        _json_object(folder / "config.json", "model config")
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT LoRA folder, refused unless ``r`` and ``lora_alpha`` are numbers.

    peft fills in ``r = 8`` and ``lora_alpha = 8`` when they are missing, which scales the update
    by 1 whatever the adapter was trained with: a check that cannot be made is refused, not passed.
    """
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise PassError(f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json)")
    config = _json_object(path, "PEFT adapter config")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        return config  # the caller refuses other adapter types by name
    problems = []
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if key not in config:
            problems.append(f"{key} is missing")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            problems.append(f"{key} must be a positive number, got {json.dumps(value)}")
    if problems:
        raise PassError(f"{path}: {'; '.join(problems)} (the merge scales B A by lora_alpha / r)")
    return config


def check_adapter_folder(adapter_dir: Path) -> None:
    for path in sorted(Path(adapter_dir).glob("*.safetensors")):
        check_safetensors(path)


@contextlib.contextmanager
def writing_to(output_dir: Path) -> Iterator[None]:
    """Report an I/O failure while writing into ``output_dir`` as an ``OSError`` naming the path."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or exc.filename is None:
            code = exc.errno or errno_codes.EIO
            raise OSError(code, exc.strerror or os.strerror(code), str(output_dir)) from exc
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors wraps the OS error in its own type
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(output_dir)) from exc
