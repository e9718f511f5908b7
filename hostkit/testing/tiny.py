"""Tiny models built from configs on CPU, with a tokenizer trained locally.

Nothing is downloaded: a 2-layer Llama-architecture model with random weights
and a byte-level BPE tokenizer trained on a small built-in corpus. Used by the
test suite, the examples and plugin authors' tests (through the ``tiny_llama``
fixture of :mod:`hostkit.testing`).
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def corpus() -> list[str]:
    """A small English corpus for training the tokenizer (no download)."""
    words = (
        "the capital of france is paris . germany berlin italy rome spain madrid country code answer question "
        "what is a an and or not yes no positive negative good bad great terrible movie film story actor "
        "### Q: A: user assistant system hello world one two three four five six seven eight nine ten "
        "translate classify sentiment label text review this was very really quite I you we they it"
    ).split()
    lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 3)]
    lines += [f"The country code of {w} is {w[:2].upper()}." for w in words]
    lines += ["".join(chr(c) for c in range(32, 127))] * 3
    return lines


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with BOS/EOS/UNK and no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(path: str | Path, *, hidden_size: int = 64, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, intermediate_size: int = 128, vocab_size: int = 512,
                     seed: int = 0, tie_word_embeddings: bool = False) -> Path:
    """Save a random-weight Llama model (fp32 safetensors) and tokenizer in ``path``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=max(vocab_size, len(tokenizer)), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_llama_100m(path: str | Path, seed: int = 0) -> Path:
    """A ~100M-parameter Llama-shaped model with random weights (benchmarks)."""
    return build_tiny_llama(path, hidden_size=768, layers=12, heads=12, kv_heads=12, intermediate_size=2048,
                            vocab_size=8000, seed=seed)


def make_lora_adapter(base_dir: str | Path, out: str | Path, *, seed: int = 0, **lora_kwargs) -> Path:
    """Save a PEFT LoRA adapter for the causal LM in ``base_dir`` to ``out``, without training.

    peft initialises lora_B to zero (an adapter that changes nothing); here B ~ N(0, 0.05),
    seeded, so the adapter visibly changes the logits. ``lora_kwargs`` go to ``LoraConfig``
    (default: r=4, alpha=8 on q_proj, v_proj and up_proj).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"], "task_type": "CAUSAL_LM"}
    kwargs.update(lora_kwargs)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(**kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    model.save_pretrained(out)
    return Path(out)


#: the rows of :func:`write_tiny_jsonl`: short question/answer texts in the tiny tokenizer's vocabulary
TINY_ROWS = [
    {"text": f"### Q: what is the country code of {country}? ### A: {country[:2].upper()}",
     "prompt": f"what is the country code of {country}?", "response": country[:2].upper()}
    for country in ("france", "germany", "italy", "spain", "paris", "berlin", "rome", "madrid")
]


def write_tiny_jsonl(path: str | Path, rows: list[dict] | None = None) -> Path:
    """Write a small jsonl file (default :data:`TINY_ROWS`: 8 rows with ``text``, ``prompt`` and ``response``)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in (TINY_ROWS if rows is None else rows)), encoding="utf-8")
    return path


def build_tiny_lora(base_dir: str | Path, out: str | Path, *, seed: int = 0, **lora_kwargs) -> Path:
    """An adapter folder as the LoRA family writes it: :func:`make_lora_adapter` (random B, so it changes the
    logits) plus the base's tokenizer files (``adapter_config.json``, ``adapter_model.safetensors``, tokenizer)."""
    from transformers import AutoTokenizer

    out = make_lora_adapter(base_dir, out, seed=seed, **lora_kwargs)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out
