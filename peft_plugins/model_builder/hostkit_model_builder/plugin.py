"""Entry-point target of hostkit-model-builder: hookimpls only, no heavy imports."""

from __future__ import annotations

from typing import Any

from hostkit import PassSpec, Requirements, hookimpl
from hostkit_model_builder.config import OWN_EXTRA_OPTIONS, ModelBuilderConfig

PASS_TYPE = "ModelBuilder"
#: genai_config.json search keys the builder writes (and onnxruntime-genai reads)
SEARCH_KEYS = ("diversity_penalty", "do_sample", "early_stopping", "length_penalty", "max_length", "min_length",
               "no_repeat_ngram_size", "num_beams", "num_return_sequences", "past_present_share_buffer",
               "repetition_penalty", "temperature", "top_k", "top_p", "chunk_size")


def _check(config: ModelBuilderConfig, context: Any) -> list[str]:
    import difflib

    problems = []
    for key in config.extra_options:
        if key in OWN_EXTRA_OPTIONS:
            problems.append(f"extra_options.{key}: set by the pass ({OWN_EXTRA_OPTIONS[key]}), not here")
    for key, value in config.search.items():
        if key not in SEARCH_KEYS:
            close = difflib.get_close_matches(key, SEARCH_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (one of {', '.join(SEARCH_KEYS)})"
            problems.append(f"search.{key}: not a genai_config.json search option{hint}")
        elif not isinstance(value, (bool, int, float)):
            problems.append(f"search.{key}: expected a number or a boolean, got {value!r}")
    if config.precision in ("fp16", "bf16") and config.execution_provider == "cpu":
        # measured with onnxruntime-genai 0.18: bf16 has no CPU kernel for Where; fp16 answers the prompt, then
        # fails at the next token in the Casts onnxruntime inserts ("Shape mismatch attempting to re-use buffer")
        problems.append(f"precision: {config.precision} graphs do not generate on onnxruntime's CPU provider; "
                        "use int4 or fp32 on CPU, or build for a GPU (execution_provider = \"cuda\")")
    if config.precision != "int4" and config.quantize_adapter:
        problems.append(f"quantize_adapter: only int4 graphs quantize MatMuls, the precision is {config.precision}")
    if config.int4_scheme == "q4_1" and config.precision != "int4":
        problems.append(f"int4_scheme: \"q4_1\" is an int4 scheme, the precision is {config.precision}")
    if config.int4_scheme == "q4_1" and (config.quantize_adapter or config.int4_block_size != 32):
        problems.append("int4_scheme: \"q4_1\" has blocks of 32 and keeps the adapter float "
                        "(leave int4_block_size and quantize_adapter at their defaults)")
    model = getattr(context, "model", None)
    if model is not None and getattr(model, "task", "text-generation") != "text-generation":
        problems.append(f"ModelBuilder builds text-generation models, the model is {model.task}")
    return problems


def run_build(config: ModelBuilderConfig, model: Any, context: Any) -> Any:
    from hostkit_model_builder.build import build_model  # onnxruntime-genai: only when the pass runs

    return build_model(model, config, context.output_dir, context)


@hookimpl
def hostkit_register(register: Any) -> None:
    register.pass_type(PassSpec(
        name=PASS_TYPE,
        config_cls=ModelBuilderConfig,
        run=run_build,
        summary="build an optimized onnxruntime-genai model (int4/fp16/bf16/fp32, KV cache) from an HfModel; "
                "a LoRA adapter stays as float MatMuls",
        requires=Requirements(modules={"onnxruntime_genai": "onnxruntime-genai>=0.18", "onnx": "onnx>=1.16",
                                       "torch": "torch>=2.2", "transformers": "transformers>=4.45",
                                       "peft": "peft>=0.13"},
                              gpu="no", notes="a QLoRA/LoftQ output also needs bitsandbytes>=0.50 (CPU works)"),
        input_types=("HfModel",),
        output_type="OnnxModel",
        check=_check,
    ))
