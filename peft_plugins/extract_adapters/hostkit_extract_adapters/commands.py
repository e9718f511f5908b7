"""The ``hostkit convert-adapters`` and ``hostkit infer`` commands.

``configure_*`` only add argparse arguments (they run for ``hostkit --help``);
``run_*`` import numpy, onnx and onnxruntime when the command runs. Expected
failures raise :class:`hostkit.ConfigError` (exit 2: an adapter or option that
does not fit) or :class:`hostkit.PassError` (exit 1), which the host prints as
one ``ERROR:`` block.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

FORMATS = ("onnx_adapter", "numpy", "safetensors")


def configure_convert(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert a PEFT LoRA adapter folder into adapter weights for a model extracted with "
                          "ExtractAdapters (contract names, A [in, r], B [r, out], scaling folded into B).")
    parser.add_argument("--adapter-path", "-a", required=True, type=Path, help="PEFT adapter folder")
    parser.add_argument("--output-path", "-o", required=True, type=Path,
                        help="output file (the format's suffix is appended when missing) or an existing folder")
    parser.add_argument("--adapter-format", choices=FORMATS, default="onnx_adapter", help="default: onnx_adapter")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="weights dtype (with --quantize-int4: the scales' dtype); default float32")
    parser.add_argument("--quantize-int4", action="store_true", help="block-wise int4 weights (MatMulNBits layout)")
    parser.add_argument("--int4-block-size", type=int, choices=(16, 32, 64, 128, 256), default=32)
    parser.add_argument("--int4-quantization-mode", choices=("symmetric", "asymmetric"), default="symmetric")
    parser.add_argument("--model", type=Path, metavar="EXTRACTED.onnx",
                        help="check every name, shape and dtype against this model's adapter inputs (and pack "
                             "the weights if its inputs are packed); a mismatch fails with the full list")
    parser.add_argument("--base-model", metavar="DIR",
                        help="base model folder (default: base_model_name_or_path of adapter_config.json)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="with --model: accept an adapter that covers only some of the model's modules")


def run_convert(args: argparse.Namespace) -> int:
    from hostkit import ConfigError, PassError
    from hostkit_adapters.contract import ContractError

    from hostkit_extract_adapters.convert import convert_peft_adapter, quantize_int4
    from hostkit_extract_adapters.signature import AdapterMismatch, read_signature
    from hostkit_extract_adapters.weights import save_weights, with_suffix

    if args.quantize_int4 and args.model is not None:
        raise ConfigError("--quantize-int4 with --model: extracted hostkit models take float adapter weights; "
                          "int4 weights fit graphs whose adapter MatMuls are MatMulNBits")
    try:
        converted = convert_peft_adapter(args.adapter_path, dtype=args.dtype, base_model=args.base_model)
    except ContractError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise PassError(f"{args.adapter_path}: {exc}") from None
    weights = converted.weights
    fits = ""
    if args.model is not None:
        try:
            signature = read_signature(args.model)
            weights = signature.fit(weights, converted.metadata, allow_partial=args.allow_partial,
                                    adapter=str(args.adapter_path))
        except AdapterMismatch as exc:
            raise ConfigError(exc.problems, source=f"{args.adapter_path} does not fit {args.model}") from None
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
        fits = f"; fits {args.model}" + (" (packed)" if signature.packed else "")
    if args.quantize_int4:
        converted = quantize_int4(converted, block_size=args.int4_block_size, mode=args.int4_quantization_mode,
                                  dtype=args.dtype)
        weights = converted.weights
    output = args.output_path
    if output.is_dir():
        output = output / "adapter_weights"
    written = save_weights(weights, with_suffix(output, args.adapter_format), args.adapter_format,
                           converted.metadata)
    ranks = sorted(set(converted.ranks.values()))
    print(f"wrote {written}: {len(weights)} tensors, {len(converted.ranks)} modules, "
          f"r={'/'.join(map(str, ranks))}, {converted.metadata.get('hostkit.dtype')}{fits}")
    return 0


def configure_infer(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Serve an ONNX model with several adapters, switching adapter per request. A folder "
                          "with genai_config.json (ModelBuilder, then ExtractAdapters) runs on onnxruntime-genai "
                          "(one og.Model, one og.Adapters, KV cache, sampling); other graphs run on plain "
                          "onnxruntime (one session, greedy). Every adapter is checked against the model before "
                          "it is loaded.")
    parser.add_argument("model", type=Path, metavar="MODEL",
                        help="an extracted .onnx file, or an onnxruntime-genai model folder (or its model.onnx)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="load an adapter (weights file or PEFT folder); repeatable. NAME defaults to the "
                             "file name without suffix")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt; repeatable")
    parser.add_argument("--use", action="append", default=[], metavar="NAME",
                        help="adapter for the prompts ('none' = base model): once for all prompts, or once per "
                             "prompt in order; default: every prompt with no adapter and with each adapter")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--chat", action="store_true",
                        help="wrap each prompt in the model's chat template as a user turn (instruct models)")
    parser.add_argument("--system", metavar="TEXT", help="with --chat: a system message before the prompt")
    parser.add_argument("--stream", action="store_true", help="print the tokens as they are generated")
    parser.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: onnxruntime's)")
    sampling = parser.add_argument_group("sampling (onnxruntime-genai models; default: greedy)")
    sampling.add_argument("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    sampling.add_argument("--temperature", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--repetition-penalty", type=float)
    sampling.add_argument("--seed", type=int, help="random seed of the sampler (reproducible samples)")
    parser.add_argument("--tokenizer", type=Path, help="plain onnxruntime models: tokenizer folder (default: the "
                                                       "model's folder)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="accept adapters that cover only some of the model's adapter weights")
    parser.add_argument("--strict", action="store_true",
                        help="a check that cannot be made (e.g. a base model named without a digest) is an error, "
                             "not a warning")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="plain onnxruntime models: let transformers run the tokenizer folder's own code")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--traceback", action="store_true",
                        help="when onnxruntime fails, show its full trace above the error line")


#: --option -> genai search option
SAMPLING = {"do_sample": "do_sample", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
            "repetition_penalty": "repetition_penalty", "seed": "random_seed"}


def _search_options(args: argparse.Namespace) -> dict[str, Any]:
    from hostkit import ConfigError

    search = {}
    for arg, option in SAMPLING.items():
        value = getattr(args, arg)
        if value is not None and value is not False:
            search[option] = value
    problems = []
    if args.temperature is not None and args.temperature <= 0:
        problems.append(f"--temperature {args.temperature}: must be > 0")
    if args.top_k is not None and args.top_k < 1:
        problems.append(f"--top-k {args.top_k}: must be >= 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        problems.append(f"--top-p {args.top_p}: must be in (0, 1]")
    if args.max_new_tokens < 1:
        problems.append(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    if args.system is not None and not args.chat:
        problems.append("--system needs --chat")
    if problems:
        raise ConfigError(problems)
    return search


def _adapter_args(values: list[str]) -> list[tuple[str, Path]]:
    from hostkit import ConfigError

    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            path = value
            name = Path(value.rstrip("/")).name
            for suffix in (".onnx_adapter", ".npz", ".safetensors"):
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
        if not name or not path:
            raise ConfigError(f"--adapter {value!r}: use NAME=PATH")
        out.append((name, Path(path)))
    return out


def run_infer(args: argparse.Namespace) -> int:
    from hostkit import ConfigError, PassError
    from hostkit_adapters.contract import ContractError

    from hostkit_extract_adapters.genai import genai_folder
    from hostkit_extract_adapters.infer import open_session
    from hostkit_extract_adapters.signature import AdapterMismatch
    from hostkit_extract_adapters.weights import WeightsFileError

    adapters = _adapter_args(args.adapter)
    names = [n for n, _ in adapters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--adapter: name {', '.join(duplicates)} given twice")
    if not args.prompt:
        raise ConfigError("--prompt: give at least one prompt")
    if args.use and len(args.use) not in (1, len(args.prompt)):
        raise ConfigError(f"--use: give it once, or once per prompt ({len(args.prompt)}), not {len(args.use)} times")
    unknown = [u for u in args.use if u != "none" and u not in names]
    if unknown:
        raise ConfigError(f"--use: {', '.join(unknown)} is not among the adapters ({', '.join(names) or 'none'})")
    search = _search_options(args)
    genai = genai_folder(args.model) is not None
    if search and not genai:
        given = [f"--{k.replace('_', '-')}" for k in SAMPLING if getattr(args, k) is not None and getattr(args, k) is not False]
        raise ConfigError(f"{', '.join(given)}: "
                          f"sampling needs an onnxruntime-genai model folder (genai_config.json); {args.model} runs "
                          "on plain onnxruntime, which decodes greedily")
    if genai and args.tokenizer is not None:
        raise ConfigError(f"--tokenizer: {args.model} is an onnxruntime-genai model, which uses the tokenizer "
                          "files of its folder")
    options: dict[str, Any] = {"allow_partial": args.allow_partial, "threads": args.threads, "strict": args.strict}
    if not genai:
        options["tokenizer"] = args.tokenizer
        options["trust_remote_code"] = args.trust_remote_code
    try:
        session = open_session(args.model, **options)
    except (FileNotFoundError, AdapterMismatch) as exc:
        raise ConfigError(str(exc)) from None
    problems = []
    for name, path in adapters:  # check every adapter before running anything
        try:
            session.load_adapter(name, path)
        except AdapterMismatch as exc:
            problems += [f"{name}: {p}" for p in exc.problems]
        except (ContractError, WeightsFileError, ValueError) as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise ConfigError(problems, source=f"adapters do not fit {args.model}")
    for line in session.unverified:  # a check that could not be made is said, never passed silently
        print(f"WARNING: {line} (--strict makes this an error)", file=sys.stderr)
    if args.use:
        uses = args.use * len(args.prompt) if len(args.use) == 1 else args.use
        requests = list(zip(args.prompt, uses))
    else:
        requests = [(p, u) for p in args.prompt for u in ["none", *names]]
    text_options: dict[str, Any] = {"chat": args.chat, "system": args.system, **search}
    try:
        for prompt, use in requests:
            adapter = None if use == "none" else use
            if args.stream and not args.json:
                print(f"[{use}] {prompt!r} -> ", end="", flush=True)
                for piece in session.stream(prompt, adapter=adapter, max_new_tokens=args.max_new_tokens,
                                            **text_options):
                    print(piece, end="", flush=True)
                print()
                continue
            text = session.generate(prompt, adapter=adapter, max_new_tokens=args.max_new_tokens, **text_options)
            if args.json:
                print(json.dumps({"adapter": use, "prompt": prompt, "completion": text}), flush=True)
            else:
                print(f"[{use}] {prompt!r} -> {text!r}")
    except FileNotFoundError as exc:
        raise PassError(str(exc)) from None
    except ValueError as exc:  # a chat template that is missing or fails, a context too long
        raise ConfigError(str(exc)) from None
    sys.stdout.flush()
    return 0


def command_specs() -> list[Any]:
    from hostkit import CommandSpec

    return [
        CommandSpec(name="convert-adapters", help="convert a PEFT adapter to weights for an extracted ONNX model",
                    configure=configure_convert, run=run_convert),
        CommandSpec(name="infer", help="serve an ONNX or onnxruntime-genai model with several adapters, switched "
                                       "per request",
                    configure=configure_infer, run=run_infer),
    ]
