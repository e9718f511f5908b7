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
    parser.description = ("Run an extracted ONNX model with several adapters in one onnxruntime session, "
                          "switching adapter per request (greedy generation).")
    parser.add_argument("model", type=Path, metavar="MODEL.onnx")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="load an adapter (weights file or PEFT folder); repeatable. NAME defaults to the "
                             "file name without suffix")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt; repeatable")
    parser.add_argument("--use", action="append", default=[], metavar="NAME",
                        help="adapter for the prompts ('none' = base model): once for all prompts, or once per "
                             "prompt in order; default: every prompt with no adapter and with each adapter")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the model's folder)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="accept adapters that cover only some of the model's adapter weights")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--traceback", action="store_true",
                        help="when onnxruntime fails, show its full trace above the error line")


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

    from hostkit_extract_adapters.infer import AdapterSession
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
    try:
        session = AdapterSession(args.model, tokenizer=args.tokenizer, allow_partial=args.allow_partial)
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
    if args.use:
        uses = args.use * len(args.prompt) if len(args.use) == 1 else args.use
        requests = list(zip(args.prompt, uses))
    else:
        requests = [(p, u) for p in args.prompt for u in ["none", *names]]
    try:
        for prompt, use in requests:
            text = session.generate(prompt, adapter=None if use == "none" else use, max_new_tokens=args.max_new_tokens)
            if args.json:
                print(json.dumps({"adapter": use, "prompt": prompt, "completion": text}))
            else:
                print(f"[{use}] {prompt!r} -> {text!r}")
    except FileNotFoundError as exc:
        raise PassError(str(exc)) from None
    sys.stdout.flush()
    return 0


def command_specs() -> list[Any]:
    from hostkit import CommandSpec

    return [
        CommandSpec(name="convert-adapters", help="convert a PEFT adapter to weights for an extracted ONNX model",
                    configure=configure_convert, run=run_convert),
        CommandSpec(name="infer", help="run an extracted ONNX model with several adapters, switched per request",
                    configure=configure_infer, run=run_infer),
    ]
