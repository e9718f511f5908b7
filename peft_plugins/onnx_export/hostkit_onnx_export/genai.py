"""``genai_config.json`` for OnnxConversion's KV-cache graphs, so onnxruntime-genai can load them.

onnxruntime-genai loads a decoder from any ONNX graph whose inputs and outputs its config names.
A ``with_past = true`` export has them: ``input_ids``, ``attention_mask`` (past + new tokens),
``position_ids`` and ``past_key_values.N.key/value`` ``[batch, kv_heads, past, head_dim]`` in,
``logits`` and ``present.N.key/value`` (past and new concatenated) out. Because the presents
grow by concatenation, the config says ``past_present_share_buffer = false`` (genai's shared
buffer needs the fused attention of its own builder). Graphs without a cache have no such
contract with genai and get no config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GENAI_CONFIG = "genai_config.json"


def genai_config(model_config: Any, io: dict[str, Any], model_file: str, generation_config: Any = None,
                 context_length: int | None = None) -> dict:
    """The config dict for a with_past graph of ``model_config`` (a transformers config)."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    eos = getattr(generation_config, "eos_token_id", None)
    eos = eos if eos is not None else getattr(text, "eos_token_id", None)
    bos = getattr(generation_config, "bos_token_id", None)
    bos = bos if bos is not None else getattr(text, "bos_token_id", None)
    pad = getattr(text, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    length = context_length or getattr(text, "max_position_embeddings", None) or 2048
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
              "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    outputs = {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": int(length),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": int(io["head_dim"]),
                "hidden_size": int(text.hidden_size),
                "inputs": inputs,
                "outputs": outputs,
                "num_attention_heads": int(text.num_attention_heads),
                "num_hidden_layers": int(io["layers"]),
                "num_key_value_heads": int(io["kv_heads"]),
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": str(getattr(text, "model_type", "llama")),
            "vocab_size": int(text.vocab_size),
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": int(length), "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 50, "top_p": 1.0,
        },
    }


def write_genai_config(output_dir: Path, model: Any, io: dict[str, Any], model_file: str) -> Path:
    """Write ``genai_config.json`` for the exported ``model`` (a transformers model) beside its graph."""
    path = Path(output_dir) / GENAI_CONFIG
    config = genai_config(model.config, io, model_file, getattr(model, "generation_config", None))
    path.write_text(json.dumps(config, indent=4) + "\n")
    return path
