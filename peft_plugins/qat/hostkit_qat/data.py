"""The tensor data types of hostkit-qat and how they are read.

``npz`` (numpy archives of input and label arrays) and ``user_script`` (a
``dataloader_func(data_config)`` in a Python file returning (inputs, labels)
batches). :class:`TensorData` holds their options; numpy is imported only when
a pass reads the data.
"""

from __future__ import annotations

from typing import Any, Iterable

import attrs

from hostkit import DataTable, DataTypeSpec, PassError, option, positive

TENSOR_TYPES = ("npz", "user_script")


@attrs.frozen
class TensorData(DataTable):
    """A ``[data.NAME]`` table of (inputs, labels) tensors."""

    input_field: str | None = option(None, help="array holding the inputs (npz)")
    label_field: str | None = option(None, help="array holding the labels (npz)")
    max_samples: int | None = option(None, help="use at most this many examples", validator=positive)
    shuffle: bool = option(False, help="shuffle before taking max_samples")
    seed: int = option(42, help="seed of the shuffle")
    batch_size: int = option(32, help="batch size", validator=positive)
    user_script: str | None = option(None, help="Python file defining dataloader_func (type = \"user_script\")", path=True)
    dataloader_func: str | None = option(None, help="function in user_script returning an iterable of (inputs, labels) batches")

    def __attrs_post_init__(self) -> None:
        if self.type == "npz" and not self.path:
            raise ValueError("type = 'npz' needs a path")
        if self.type == "user_script" and not (self.user_script and self.dataloader_func):
            raise ValueError("type = \"user_script\" needs user_script and dataloader_func")


def data_type_specs() -> list[DataTypeSpec]:
    return [DataTypeSpec("npz", TensorData, "input and label arrays in a numpy .npz archive"),
            DataTypeSpec("user_script", TensorData, "(inputs, labels) batches from a dataloader_func in a Python file")]


def load_arrays(config: TensorData, name: str) -> tuple[Any, Any]:
    """(inputs, labels) numpy arrays of an ``npz`` data table."""
    import numpy as np

    where = f"data.{name}"
    if config.type != "npz":
        raise PassError(f"{where}.type: expected \"npz\" for tensor data, got {config.type!r}")
    try:
        archive = np.load(config.path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PassError(f"{where}.path: cannot read {config.path}: {exc}") from exc
    for option_name in ("input_field", "label_field"):
        key = getattr(config, option_name)
        if not key:
            raise PassError(f"{where}.{option_name}: required for type = \"npz\" (arrays: {', '.join(archive.files)})")
        if key not in archive.files:
            raise PassError(f"{where}.{option_name}: no array {key!r} in {config.path} (arrays: {', '.join(archive.files)})")
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


def user_batches(config: TensorData, name: str) -> Iterable[Any]:
    """The iterable a ``user_script`` ``dataloader_func(data_config)`` returns."""
    from hostkit.scripts import load_function

    func = load_function(config.user_script, config.dataloader_func, f"data.{name}.dataloader_func",
                         f"data.{name}.user_script")
    return func(config)
