"""The text data types of the LoRA family and how their rows are read.

hostkit-lora registers ``jsonl``, ``json``, ``csv``, ``text``, ``parquet``,
``hf-disk`` (``save_to_disk`` folders) and ``hub`` (datasets on the Hugging Face
hub); QLoRA and LoftQ train on the same tables. :class:`TextData` holds the options
that only text training reads (which column, template or chat messages, the
response template, packing); :func:`load_rows` reads the rows with ``datasets``
(imported only there, when a pass runs).
"""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any

import attrs

from hostkit import DataTable, DataTypeSpec, PassError, one_of, option, positive

#: data type -> the ``datasets`` builder that reads it
FILE_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "text": "text", "parquet": "parquet"}
TEXT_TYPES = (*FILE_BUILDERS, "hf-disk", "hub")


def _exactly_one_text_source(instance: "TextData") -> None:
    sources = [n for n in ("text_field", "text_template", "messages_field") if getattr(instance, n)]
    if len(sources) > 1:
        raise ValueError(f"set only one of text_field, text_template, messages_field (got {', '.join(sources)})")


@attrs.frozen
class TextData(DataTable):
    """A ``[data.NAME]`` table of text examples (one row per example)."""

    split: str = option("train", help="split to read (hub and hf-disk DatasetDict)")
    text_field: str | None = option(None, help="column holding the training text")
    text_template: str | None = option(None, help="template with {column} placeholders, e.g. \"### Q: {question}\\n### A: {answer}\"")
    messages_field: str | None = option(None, help="column of chat messages, rendered with the tokenizer's chat template")
    label_field: str | None = option(None, help="column holding the label (text-classification)")
    labels: list[str] | None = option(None, help="label set in index order (default: sorted distinct values)")
    max_seq_len: int = option(512, help="tokens per example (longer examples are cut)", validator=positive)
    max_samples: int | None = option(None, help="use at most this many examples", validator=positive)
    shuffle: bool = option(False, help="shuffle before taking max_samples")
    seed: int = option(42, help="seed of the shuffle")
    packing: str = option("none", help="none; join: concatenate all examples and cut into max_seq_len blocks "
                                       "(attention stays within each example); padding_free: each batch is one row "
                                       "of whole examples, no padding",
                          validator=one_of("none", "join", "padding_free"))
    add_special_tokens: bool = option(True, help="let the tokenizer add BOS/EOS tokens")
    response_template: str | None = option(None, help="train only on the text after the first occurrence of this "
                                                      "string (e.g. \"Answer:\"); the prompt before it is not scored")
    append_eos: bool = option(False, help="end every causal-LM example with the EOS token, so the model learns to stop")

    def __attrs_post_init__(self) -> None:
        _exactly_one_text_source(self)
        if not self.path:
            raise ValueError(f"type = {self.type!r} needs a path")


@attrs.frozen
class HubTextData(TextData):
    """``type = "hub"``: ``path`` is a dataset name on the Hugging Face hub, not a file."""

    path: str | None = option(None, help="dataset name on the hub, e.g. \"imdb\"")


def data_type_specs() -> list[DataTypeSpec]:
    files = "rows of a file or a folder of files, read with the datasets library"
    specs = [DataTypeSpec(name, TextData, files) for name in FILE_BUILDERS]
    specs.append(DataTypeSpec("hf-disk", TextData, "a datasets save_to_disk folder (a Dataset or DatasetDict)"))
    specs.append(DataTypeSpec("hub", HubTextData, "a dataset on the Hugging Face hub (where it is reachable)"))
    return specs


def load_rows(config: TextData, name: str) -> Any:
    """A ``datasets.Dataset`` with the rows of ``data.<name>``, shuffled and cut as configured.

    Errors (missing file, empty data, missing column) name the data table.
    """
    import datasets

    where = f"data.{name}"
    datasets.disable_progress_bars()
    try:
        loaded = _load(config, where, datasets)
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
    for option_name in ("text_field", "messages_field", "label_field"):
        column = getattr(config, option_name)
        if column and column not in loaded.column_names:
            raise PassError(f"{where}.{option_name}: no column {column!r} in {config.path} "
                            f"(columns: {', '.join(loaded.column_names)})")
    return loaded


def _json_rows(files: list[str]) -> list[dict[str, Any]] | None:
    """The rows of JSON-lines files or JSON arrays of objects, read with ``json``, so strings stay strings
    (datasets' Arrow JSON reader turns a date-looking string into a timestamp: "1989-10-06" would come
    back as "1989-10-06 00:00:00"). None for any other JSON shape (datasets reads those)."""
    rows: list[dict[str, Any]] = []
    for file in files:
        text = Path(file).read_text(encoding="utf-8")
        stripped = text.lstrip()
        if stripped.startswith("["):
            data = json.loads(text)
            if not all(isinstance(row, dict) for row in data):
                return None
            rows += data
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    if number == 1 and stripped.startswith("{"):
                        return None  # one JSON object over several lines: datasets' own shapes
                    raise ValueError(f"{file}, line {number}: not valid JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{file}, line {number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
    return rows


def _load(config: TextData, where: str, datasets: Any) -> Any:
    if config.type in FILE_BUILDERS:
        path = Path(config.path or "")
        if not path.exists():
            raise PassError(f"{where}.path: {path} does not exist")
        files = sorted(str(p) for p in path.iterdir() if p.is_file()) if path.is_dir() else [str(path)]
        if config.type in ("jsonl", "json"):
            rows = _json_rows(files)
            if rows is not None:
                return datasets.Dataset.from_list(rows)
        return datasets.load_dataset(FILE_BUILDERS[config.type], data_files={"train": files}, split="train")
    if config.type == "hf-disk":
        loaded = datasets.load_from_disk(config.path)
        if isinstance(loaded, datasets.DatasetDict):
            if config.split not in loaded:
                raise PassError(f"{where}.split: no split {config.split!r} in {config.path} (has: {', '.join(loaded)})")
            loaded = loaded[config.split]
        return loaded
    if config.type == "hub":
        return datasets.load_dataset(config.path, split=config.split)
    raise PassError(f"{where}.type: {config.type!r} is not a text data type ({', '.join(TEXT_TYPES)})")
