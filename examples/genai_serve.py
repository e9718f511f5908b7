"""Serve an onnxruntime-genai model folder with several LoRA adapters: one og.Model, one og.Adapters.

Imports nothing from hostkit: this is what a deployment needs. Greedy generation; every prompt
with no adapter and with each adapter (or the ones given with --use), one JSON line each.

    python examples/genai_serve.py MODEL_DIR --adapter a=A.onnx_adapter --adapter b=B.onnx_adapter \
        --prompt "Q: Repeat the word cat." [--max-new-tokens 16] [--use a]
"""

from __future__ import annotations

import argparse
import json

import onnxruntime_genai as og


def greedy(model: og.Model, adapters: og.Adapters | None, adapter: str | None, ids: list[int], new_tokens: int) -> list[int]:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    if adapter is not None:
        generator.set_active_adapter(adapters, adapter)
    generator.append_tokens(ids)
    out: list[int] = []
    while not generator.is_done() and len(out) < new_tokens:
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--prompt", action="append", default=[])
    parser.add_argument("--prompt-ids", action="append", default=[], metavar="JSON",
                        help="a prompt given as token ids, e.g. [1, 86, 264]")
    parser.add_argument("--use", action="append", default=[], metavar="NAME", help="'none' = the base model")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    model = og.Model(args.model_dir)
    tokenizer = og.Tokenizer(model)
    adapters = og.Adapters(model) if args.adapter else None
    for spec in args.adapter:
        name, _, path = spec.partition("=")
        adapters.load(path, name)
    uses = args.use or ["none"] + [spec.partition("=")[0] for spec in args.adapter]
    prompts = [(p, [int(t) for t in tokenizer.encode(p)]) for p in args.prompt]
    prompts += [(None, json.loads(ids)) for ids in args.prompt_ids]
    for text, ids in prompts:
        for use in uses:
            tokens = greedy(model, adapters, None if use == "none" else use, ids, args.max_new_tokens)
            print(json.dumps({"adapter": use, "prompt": text, "prompt_ids": ids, "tokens": tokens,
                              "completion": tokenizer.decode(tokens)}))


if __name__ == "__main__":
    main()
