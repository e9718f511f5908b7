"""Packed batches never attend across examples: equal to computing each example alone."""

from __future__ import annotations

import pytest
import torch

from hostkit_lora.data import TextData
from hostkit_lora.data import load_rows
from hostkit_lora.tokenization import IGNORE_INDEX, Collator, causal_lm_dataset


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.pad_token = tok.eos_token
    return tok


def _model(path, attn: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return (a - b).abs().max().item() <= rel * b.abs().max().item()


EXAMPLES = [[1, 40, 41, 42, 43, 44, 2], [1, 50, 51, 2], [1, 60, 61, 62, 63, 64, 65, 66, 67, 2]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_padding_free_batch_equals_each_example_alone(tiny_llama, attn):
    model = _model(tiny_llama, attn)
    examples = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)} for ids in EXAMPLES]
    flat = Collator(2, padding_free=True)(examples)
    assert flat["input_ids"].shape == (1, sum(map(len, EXAMPLES))) and "attention_mask" not in flat
    assert flat["position_ids"][0].tolist() == [p for ids in EXAMPLES for p in range(len(ids))]
    with torch.no_grad():
        packed = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False).logits[0]
        start = 0
        for ids in EXAMPLES:
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            assert _close(packed[start:start + len(ids)], alone), (attn, ids)
            start += len(ids)
        # the same loss as the padded batch (same scored tokens: the first of each example never is)
        padded = Collator(2)(examples)
        loss_padded = model(**padded).loss
        loss_flat = model(**flat, use_cache=False).loss
    assert _close(loss_flat, loss_padded)
    starts = [sum(map(len, EXAMPLES[:k])) for k in range(len(EXAMPLES))]
    assert all(flat["labels"][0, s].item() == IGNORE_INDEX for s in starts)


def test_without_restarting_positions_the_examples_would_mix(tiny_llama):
    """The check above can fail: concatenated with plain positions, the second example sees the first."""
    model = _model(tiny_llama, "sdpa")
    ids = EXAMPLES[0] + EXAMPLES[1]
    with torch.no_grad():
        mixed = model(input_ids=torch.tensor([ids])).logits[0, len(EXAMPLES[0]):]
        alone = model(input_ids=torch.tensor([EXAMPLES[1]])).logits[0]
    assert not _close(mixed, alone, rel=1e-3)


def test_join_blocks_attend_only_within_each_example(tiny_llama, data_dir, tokenizer):
    config = TextData(type="jsonl", path=str(data_dir / "count.jsonl"), max_seq_len=16, packing="join")
    dataset = causal_lm_dataset(load_rows(config, "train"), config, "train", tokenizer)
    model = _model(tiny_llama, "sdpa")
    batch = Collator(tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    checked = 0
    for row in range(2):
        positions = batch["position_ids"][row].tolist()
        starts = [i for i, p in enumerate(positions) if i == 0 or p != positions[i - 1] + 1] + [len(positions)]
        assert len(starts) > 2  # the block holds parts of at least two examples
        for a, b in zip(starts, starts[1:]):
            with torch.no_grad():
                alone = model(input_ids=batch["input_ids"][row:row + 1, a:b],
                              position_ids=batch["position_ids"][row:row + 1, a:b]).logits[0]
            assert _close(packed[row, a:b], alone)
            if a > 0:
                assert batch["labels"][row, a].item() == IGNORE_INDEX  # not predicted from the previous example
            checked += 1
    assert checked >= 4


def test_padding_free_pass_with_a_response_template(tiny_llama, data_dir, run_toml, monkeypatch):
    from hostkit_lora.training import LoraTraining

    seen = []
    prepare = LoraTraining.prepare_model
    monkeypatch.setattr(LoraTraining, "prepare_model", lambda self, model: seen.append(model) or prepare(self, model))
    result = run_toml(f'''
[model]
type = "HfModel"
path = "{tiny_llama}"
[data.train]
type = "jsonl"
path = "{data_dir / 'qa.jsonl'}"
text_template = "### Q: {{question}}\\n### A: {{answer}}"
response_template = "### A:"
packing = "padding_free"
max_seq_len = 32
[[passes]]
type = "LoRA"
r = 4
train_data_config = "train"
[passes.training_args]
max_steps = 4
per_device_train_batch_size = 8
logging_steps = 1
[output]
dir = "out"
''')
    assert result.exit_code == 0, result.output
    metrics = result.step(0)["metrics"]
    from transformers import AutoTokenizer

    import json

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    rows = [json.loads(line) for line in (data_dir / "qa.jsonl").read_text().splitlines()]
    texts = [f"### Q: {r['question']}\n### A: {r['answer']}" for r in rows]
    # 4 x 8 = every row once, and no padding tokens counted
    assert metrics["train_tokens"] == sum(len(ids) for ids in tok(texts, truncation=True, max_length=32)["input_ids"])
    assert len(metrics["train_loss"]) == 4 and all(v == v for _, v in metrics["train_loss"])
    # trained without a KV cache: with one, transformers would ignore the packed positions
    assert len(seen) == 1 and seen[0].config.use_cache is False
