"""Turning a ``[data.NAME]`` table into tokenized training examples.

Rows come from :func:`hostkit_lora.data.load_rows`; the options are :class:`TextData`'s; this
module picks the text (``text_field``, ``text_template`` with ``{column}``
placeholders, or ``messages_field`` rendered by the tokenizer's chat template),
tokenizes it, packs it (Olive's ``join`` strategy) and builds the collators.
Every error names the data config and the option at fault, e.g.
``data.train.text_template: no column 'answer' (columns: question, reply)``.

Causal LM examples train on every token (``labels = input_ids``) unless the data
config names a ``response_template``: then only the tokens after its first
occurrence are scored (the prompt is labelled -100, as TRL's completion-only
collator does), found through the tokenizer's character offsets so that the
boundary is exact whatever the merges. Padding is labelled -100 so it never
counts, even where the pad token is the EOS token.
"""

from __future__ import annotations

import string
from typing import Any

from hostkit import PassError
from hostkit_lora.data import TextData

IGNORE_INDEX = -100


class ExampleDataset:
    """A list of tokenized examples (dicts of int lists) that the Trainer can index."""

    def __init__(self, examples: list[dict[str, Any]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def texts_of(rows: Any, config: TextData, name: str, tokenizer: Any) -> list[str]:
    """The training text of each row, as the data config says."""
    where = f"data.{name}"
    columns = list(rows.column_names)
    if config.text_template:
        for field in _template_fields(config.text_template):
            if field not in columns:
                raise PassError(f"{where}.text_template: no column {field!r} (columns: {', '.join(columns)})")
        try:
            return [config.text_template.format(**row) for row in rows]
        except (IndexError, ValueError, KeyError) as exc:
            raise PassError(f"{where}.text_template: cannot fill {config.text_template!r}: {exc}") from None
    if config.messages_field:
        if not getattr(tokenizer, "chat_template", None):
            raise PassError(f"{where}.messages_field: the tokenizer has no chat template; "
                            "use text_field or text_template instead")
        out = []
        for i, messages in enumerate(rows[config.messages_field]):
            if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                         for m in messages):
                raise PassError(f"{where}.messages_field: row {i} of column {config.messages_field!r} is not a list "
                                "of {role, content} messages")
            out.append(tokenizer.apply_chat_template(messages, tokenize=False))
        return out
    field = config.text_field or "text"
    if field not in columns:
        hint = "" if config.text_field else " (set text_field, text_template or messages_field)"
        raise PassError(f"{where}.text_field: no column {field!r}{hint} (columns: {', '.join(columns)})")
    values = rows[field]
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise PassError(f"{where}.text_field: row {i} of column {field!r} is {type(value).__name__}, not text")
    return list(values)


def _encode(tokenizer: Any, texts: list[str], config: TextData, *, truncate: bool) -> list[list[int]]:
    bos = tokenizer.bos_token
    ids: list[list[int]] = []
    # A chat template usually writes BOS itself: do not add a second one.
    plain = [t for t in texts if not (bos and t.startswith(bos))]
    templated = [t for t in texts if bos and t.startswith(bos)]
    kwargs = {"truncation": truncate, "max_length": config.max_seq_len if truncate else None}
    encoded_plain = iter(tokenizer(plain, add_special_tokens=config.add_special_tokens, **kwargs)["input_ids"]) if plain else iter(())
    encoded_tpl = iter(tokenizer(templated, add_special_tokens=False, **kwargs)["input_ids"]) if templated else iter(())
    for t in texts:
        ids.append(list(next(encoded_tpl) if bos and t.startswith(bos) else next(encoded_plain)))
    return ids


def _pack(ids: list[list[int]], block: int, eos_id: int | None) -> list[dict[str, list[int]]]:
    """Olive's ``join``: concatenate every example (EOS between) and cut full blocks; a short tail is dropped
    unless it is all there is.

    Unlike Olive, the examples in a block do not attend to each other: ``position_ids`` restart at each
    example (the collator then passes no attention mask, and transformers builds a block-diagonal causal mask
    from the positions), and the first token of each example is not scored (it would be predicted from the
    previous example)."""
    stream: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    for seq in ids:
        if eos_id is not None and (not seq or seq[-1] != eos_id):
            seq = [*seq, eos_id]
        stream += seq
        positions += range(len(seq))
        labels += [IGNORE_INDEX, *seq[1:]] if labels else list(seq)
    starts = list(range(0, len(stream) - block + 1, block)) or [0]
    return [{"input_ids": stream[i:i + block], "position_ids": positions[i:i + block], "labels": labels[i:i + block]}
            for i in starts]


def _response_labels(tokenizer: Any, texts: list[str], ids: list[list[int]], config: TextData,
                     name: str) -> list[list[int]]:
    """Labels that score only the tokens after ``config.response_template``."""
    template = config.response_template
    labels = []
    for i, (text, seq) in enumerate(zip(texts, ids)):
        start = text.find(template)
        if start < 0:
            raise PassError(f"data.{name}.response_template: {template!r} does not occur in example {i}: {text[:80]!r}")
        boundary = start + len(template)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        plain, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
        # where the text's own tokens start in `seq` (after a BOS or other special prefix)
        lead = next((p for p in range(0, 4) if seq[p:p + min(len(plain), len(seq) - p)] == plain[:len(seq) - p]), 0)
        row = []
        for k, token in enumerate(seq):
            j = k - lead
            in_prompt = j < 0 or (j < len(offsets) and offsets[j][0] < boundary)
            row.append(IGNORE_INDEX if in_prompt else token)
        if all(v == IGNORE_INDEX for v in row):
            raise PassError(f"data.{name}.response_template: nothing follows {template!r} in example {i} "
                            f"(after max_seq_len = {config.max_seq_len} tokens)")
        labels.append(row)
    return labels


def causal_lm_dataset(rows: Any, config: TextData, name: str, tokenizer: Any) -> ExampleDataset:
    """Examples for ``text-generation``: ``input_ids``, ``attention_mask``, ``labels``."""
    texts = texts_of(rows, config, name, tokenizer)
    ids = _encode(tokenizer, texts, config, truncate=config.packing != "join")
    if config.append_eos and tokenizer.eos_token_id is not None:
        ids = [seq if seq and seq[-1] == tokenizer.eos_token_id else seq + [tokenizer.eos_token_id] for seq in ids]
    if config.response_template:
        if config.packing == "join":
            raise PassError(f"data.{name}.response_template: cannot be combined with packing = \"join\" "
                            "(use packing = \"padding_free\")")
        labels = _response_labels(tokenizer, texts, ids, config, name)
        return ExampleDataset([{"input_ids": seq, "attention_mask": [1] * len(seq), "labels": lab}
                               for seq, lab in zip(ids, labels)])
    if config.packing == "join":
        blocks = [b for b in _pack(ids, config.max_seq_len, tokenizer.eos_token_id) if b["input_ids"]]
        if not blocks:
            raise PassError(f"data.{name}: every example tokenizes to nothing")
        return ExampleDataset(blocks)
    ids = [seq for seq in ids if seq]
    if not ids:
        raise PassError(f"data.{name}: every example tokenizes to nothing")
    return ExampleDataset([{"input_ids": seq, "attention_mask": [1] * len(seq), "labels": list(seq)} for seq in ids])


def label_set(rows: Any, config: TextData, name: str) -> list[str]:
    """The labels in index order: ``labels`` of the data config, else the sorted distinct values."""
    if not config.label_field:
        raise PassError(f"data.{name}.label_field: required for text-classification (columns: {', '.join(rows.column_names)})")
    if config.labels:
        return list(config.labels)
    values = rows[config.label_field]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return [str(i) for i in range(max(values) + 1)]
    return sorted({str(v) for v in values})


def classification_dataset(rows: Any, config: TextData, name: str, tokenizer: Any,
                           labels: list[str]) -> ExampleDataset:
    """Examples for ``text-classification``: ``input_ids``, ``attention_mask``, ``labels`` (an index)."""
    if config.packing != "none":
        raise PassError(f"data.{name}.packing: \"join\" mixes examples, which makes no sense for text-classification")
    texts = texts_of(rows, config, name, tokenizer)
    ids = _encode(tokenizer, texts, config, truncate=True)
    index = {label: i for i, label in enumerate(labels)}
    examples = []
    for i, (seq, value) in enumerate(zip(ids, rows[config.label_field])):
        key = str(value)
        if key not in index:
            raise PassError(f"data.{name}.label_field: row {i} has label {value!r}, not in the label set "
                            f"({', '.join(labels)})")
        examples.append({"input_ids": seq, "attention_mask": [1] * len(seq), "labels": index[key]})
    return ExampleDataset(examples)


class Collator:
    """Right-pads a batch: ``input_ids`` with the pad token, ``attention_mask`` with 0, token labels with -100.

    Examples with ``position_ids`` (``packing = "join"`` blocks) get no attention mask: transformers then
    builds a block-diagonal causal mask from the positions (each example attends to itself only); padding
    restarts the positions, so it is a segment of its own. ``padding_free = True`` (``packing =
    "padding_free"``) puts the whole batch in one row with transformers' ``DataCollatorWithFlattening``:
    no padding at all, positions restarting per example, the first token of each example not scored.
    """

    def __init__(self, pad_token_id: int, *, padding_free: bool = False):
        self.pad_token_id = pad_token_id
        self.padding_free = padding_free
        self._flatten: Any = None

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if self.padding_free:
            if self._flatten is None:
                from transformers import DataCollatorWithFlattening

                self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
            return self._flatten([{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in batch])

        width = max(len(ex["input_ids"]) for ex in batch)

        def pad(seq: list[int], value: int) -> list[int]:
            return list(seq) + [value] * (width - len(seq))

        out = {"input_ids": torch.tensor([pad(ex["input_ids"], self.pad_token_id) for ex in batch], dtype=torch.long)}
        if "position_ids" in batch[0]:
            out["position_ids"] = torch.tensor([list(ex["position_ids"]) + list(range(width - len(ex["position_ids"])))
                                                for ex in batch], dtype=torch.long)
        else:
            out["attention_mask"] = torch.tensor([pad(ex["attention_mask"], 0) for ex in batch], dtype=torch.long)
        labels = [ex["labels"] for ex in batch]
        if isinstance(labels[0], list):
            out["labels"] = torch.tensor([pad(lab, IGNORE_INDEX) for lab in labels], dtype=torch.long)
        else:
            out["labels"] = torch.tensor(labels, dtype=torch.long)
        return out
