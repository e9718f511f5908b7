"""GGUF checkpoints: convert once into a normal safetensors model folder.

transformers (with the ``gguf`` package) loads a GGUF file into a float model,
but refuses to ``save_pretrained`` it ("quantized with gguf and is not
serializable"). A plain model built from the same config, without its
``quantization_config``, given the loaded state dict, saves a normal folder.
The folder is cached next to the GGUF file's name and content fingerprint, so
the conversion (tens of seconds) happens once. hostkit-lora's
``hostkit_load_model`` does this for every ``HfModel`` with a ``gguf_file``
(it moved here from the host, which does not depend on transformers).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import attrs

from hostkit.errors import PassError
from hostkit.fsutil import fingerprint, stable_hash


def cache_root() -> Path:
    return Path(os.environ.get("HOSTKIT_CACHE", Path.home() / ".cache" / "hostkit"))


def gguf_location(model: Any) -> tuple[Path, str]:
    """(folder, file name) of the GGUF file of an HfModel."""
    file = Path(model.gguf_file)
    if not file.is_absolute():
        file = Path(model.path) / file
    if not file.exists():
        raise PassError(f"model.gguf_file: {file} does not exist")
    return file.parent, file.name


def convert_gguf(model: Any, context: Any = None) -> Any:
    """Return a copy of ``model`` pointing at a cached safetensors conversion of its GGUF file."""
    folder, name = gguf_location(model)
    key = stable_hash({"file": str(folder / name), "fp": fingerprint(folder / name), "task": model.task})
    target = cache_root() / "gguf" / f"{Path(name).stem}-{key[:12]}"
    if not (target / "config.json").exists():
        if context is None or context.is_main_process:
            _convert(folder, name, model, target, context)
        else:
            # under torchrun no process group exists yet at load time: wait for rank 0's folder
            deadline = time.monotonic() + 3600
            while not (target / "config.json").exists():
                if time.monotonic() > deadline:
                    raise PassError(f"model.gguf_file: rank 0 did not convert {name} within an hour")
                time.sleep(0.5)
    return attrs.evolve(model, path=str(target), gguf_file=None, tokenizer_path=model.tokenizer_path or str(target))


def _convert(folder: Path, name: str, model: Any, target: Path, context: Any) -> None:

    import transformers

    transformers.utils.logging.disable_progress_bar()  # the host prints its own progress
    stream = getattr(context, "stream", None)
    if stream is not None:
        print(f"converting {folder / name} to safetensors (once; cached in {target}) ...", file=stream, flush=True)
    start = time.perf_counter()
    auto = transformers.AutoModelForSequenceClassification if model.task == "text-classification" else transformers.AutoModelForCausalLM
    loaded = auto.from_pretrained(str(folder), gguf_file=name, trust_remote_code=model.trust_remote_code)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=name,
                                                           trust_remote_code=model.trust_remote_code)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    if getattr(loaded, "generation_config", None) is not None:
        loaded.generation_config.save_pretrained(partial)
    partial.rename(target)
    if stream is not None:
        print(f"converted in {time.perf_counter() - start:.1f}s", file=stream, flush=True)
