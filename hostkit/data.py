"""Loading the examples of a ``[data.NAME]`` table.

Text-like types (jsonl, json, csv, text, parquet, hf-disk, hub) load through
the ``datasets`` library into a ``datasets.Dataset`` of rows; tokenization is
the business of the training plugins (hostkit-lora exports it for the LoRA
family). Tensor types (npz, user_script) give numpy arrays or batches for
passes such as QuantizationAwareTraining. ``datasets`` and numpy are imported
only here, when a pass asks for data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from hostkit.config import DataConfig
from hostkit.errors import PassError

_FILE_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "text": "text", "parquet": "parquet"}


def load_rows(config: DataConfig, name: str) -> Any:
    """A ``datasets.Dataset`` with the rows of ``data.<name>``, shuffled and cut as configured.

    Errors (missing file, empty data, missing column) name the data config.
    """
    import datasets

    where = f"data.{name}"
    datasets.disable_progress_bars()
    try:
        if config.type in _FILE_BUILDERS:
            path = Path(config.path or "")
            if not path.exists():
                raise PassError(f"{where}.path: {path} does not exist")
            files = sorted(str(p) for p in path.iterdir() if p.is_file()) if path.is_dir() else [str(path)]
            loaded = datasets.load_dataset(_FILE_BUILDERS[config.type], data_files={"train": files}, split="train")
        elif config.type == "hf-disk":
            loaded = datasets.load_from_disk(config.path)
            if isinstance(loaded, datasets.DatasetDict):
                if config.split not in loaded:
                    raise PassError(f"{where}.split: no split {config.split!r} in {config.path} (has: {', '.join(loaded)})")
                loaded = loaded[config.split]
        elif config.type == "hub":
            loaded = datasets.load_dataset(config.path, split=config.split)
        else:
            raise PassError(f"{where}.type: {config.type!r} holds tensors, not text rows")
    except PassError:
        raise
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise PassError(f"{where}: cannot read {config.path}: {exc}") from exc
    except Exception as exc:  # datasets wraps parse errors in its own types
        raise PassError(f"{where}: cannot read {config.path}: {type(exc).__name__}: {exc}") from exc
    if config.shuffle:
        loaded = loaded.shuffle(seed=config.seed)
    if config.max_samples is not None:
        loaded = loaded.select(range(min(config.max_samples, len(loaded))))
    if len(loaded) == 0:
        raise PassError(f"{where}: {config.path} holds no examples")
    for option in ("text_field", "messages_field", "label_field"):
        column = getattr(config, option)
        if column and column not in loaded.column_names:
            raise PassError(f"{where}.{option}: no column {column!r} in {config.path} (columns: {', '.join(loaded.column_names)})")
    return loaded


def load_arrays(config: DataConfig, name: str) -> tuple[Any, Any]:
    """(inputs, labels) numpy arrays of an ``npz`` data config."""
    import numpy as np

    where = f"data.{name}"
    if config.type != "npz":
        raise PassError(f"{where}.type: expected \"npz\" for tensor data, got {config.type!r}")
    try:
        archive = np.load(config.path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PassError(f"{where}.path: cannot read {config.path}: {exc}") from exc
    for option in ("input_field", "label_field"):
        key = getattr(config, option)
        if not key:
            raise PassError(f"{where}.{option}: required for type = \"npz\" (arrays: {', '.join(archive.files)})")
        if key not in archive.files:
            raise PassError(f"{where}.{option}: no array {key!r} in {config.path} (arrays: {', '.join(archive.files)})")
    inputs, labels = archive[config.input_field], archive[config.label_field]
    if config.shuffle:
        order = np.random.default_rng(config.seed).permutation(len(inputs))
        inputs, labels = inputs[order], labels[order]
    if config.max_samples is not None:
        inputs, labels = inputs[: config.max_samples], labels[: config.max_samples]
    if len(inputs) == 0:
        raise PassError(f"{where}: {config.path} holds no examples")
    if len(inputs) != len(labels):
        raise PassError(f"{where}: {config.input_field} has {len(inputs)} rows but {config.label_field} has {len(labels)}")
    return inputs, labels


def user_batches(config: DataConfig, name: str) -> Iterable[Any]:
    """The iterable a ``user_script`` ``dataloader_func(data_config)`` returns."""
    from hostkit.scripts import load_function

    func = load_function(config.user_script, config.dataloader_func, f"data.{name}.dataloader_func",
                         f"data.{name}.user_script")
    return func(config)
