"""``training_args``: checked at validation time, resolved at run time.

``hostkit validate`` must not import transformers (it takes seconds and pulls
in torch), yet an unknown ``TrainingArguments`` field must be an error there,
not a warning at run time (Olive drops such keys with a warning). So the field
names and annotations are read from the installed ``transformers/training_args.py``
with :mod:`ast`: the source of truth is the version that will run.

Olive's defaults (``HFTrainingArguments``, OLIVE_REFERENCE 1.3) apply under the
user's values; ``output_dir`` is always inside the step folder, so an
interrupted step finds its checkpoints when it is started again.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

from hostkit.config import did_you_mean
from hostkit.hardware import cuda_visible

#: Olive's HFTrainingArguments defaults (learning rate, schedule, warmup, checkpointing, reporting).
OLIVE_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.03,
    "gradient_checkpointing": True,
    "report_to": "none",
}
#: Ours: no tqdm bars (the host shows progress), safetensors checkpoints.
HOST_DEFAULTS: dict[str, Any] = {"disable_tqdm": True,
                                 # a NaN/inf loss must reach the log (the Trainer would average it away, showing 0.0)
                                 "logging_nan_inf_filter": False}
#: Keys we accept besides TrainingArguments fields (Olive compatibility).
OLIVE_ONLY_KEYS = {
    "overwrite_output_dir": "start training afresh instead of resuming from a checkpoint",
    "extra_args": "Olive's nested table of further TrainingArguments fields (flattened)",
}
#: Renamed fields: older name -> newer name; whichever the installed transformers has is used.
ALIASES = {"warmup_ratio": "warmup_steps", "gradient_checkpointing": "activation_checkpointing",
           "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
           "evaluation_strategy": "eval_strategy"}
#: Options that need a CUDA GPU when true.
GPU_ONLY = {"fp16": "fp16 mixed precision", "fp16_full_eval": "fp16 evaluation", "tf32": "TF32 matmuls"}


@functools.lru_cache(maxsize=1)
def training_arg_fields() -> dict[str, str] | None:
    """``{field name: annotation source}`` of ``transformers.TrainingArguments``, without importing it.

    ``None`` when transformers is not installed (the pass's requirements report that).
    """
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    source = Path(spec.origin).parent / "training_args.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments":
            return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in _annotated(node.body)
                    if _is_init_field(stmt)}
    return None


def _annotated(body: list[ast.stmt]) -> list[ast.AnnAssign]:
    out: list[ast.AnnAssign] = []
    for stmt in body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            out.append(stmt)
        elif isinstance(stmt, ast.If):  # fields declared under `if is_torch_available():`
            out += _annotated(stmt.body) + _annotated(stmt.orelse)
    return out


def _is_init_field(stmt: ast.AnnAssign) -> bool:
    if "ClassVar" in ast.unparse(stmt.annotation) or stmt.target.id.startswith("_"):
        return False
    call = stmt.value
    if isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", "")) == "field":
        for kw in call.keywords:
            if kw.arg == "init" and isinstance(kw.value, ast.Constant) and kw.value.value is False:
                return False
    return True


_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _type_problem(value: Any, annotation: str) -> str | None:
    """A message when ``value`` cannot be of a simple annotation (int, float | None, ...); else None."""
    parts = [p.strip() for p in annotation.replace("Optional[", "").replace("]", "").split("|")]
    optional = "None" in parts or annotation.startswith("Optional[")
    parts = [p for p in parts if p != "None"]
    if not parts or any(p not in _SIMPLE_TYPES for p in parts):
        return None  # unions with enums, dicts, lists: transformers checks them at run time
    if value is None and optional:
        return None
    allowed = tuple(t for p in parts for t in _SIMPLE_TYPES[p])
    if isinstance(value, bool) and bool not in allowed:
        return f"expected {annotation}, got boolean {str(value).lower()}"
    if not isinstance(value, allowed):
        return f"expected {annotation}, got {type(value).__name__} {value!r}"
    return None


def flatten(user: dict[str, Any]) -> dict[str, Any]:
    """Olive's ``extra_args`` sub-table merged into the top level (top level wins)."""
    user = dict(user)
    extra = user.pop("extra_args", None)
    return {**extra, **user} if isinstance(extra, dict) else user


#: TrainingArguments fields that must be positive integers (a 0 fails deep inside the Trainer or torch)
POSITIVE_INTS = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")


def check_training_args(user: dict[str, Any], *, prefix: str = "training_args") -> list[str]:
    """Problems with a ``training_args`` table, each ``"<prefix>.<key>: <message>"``."""
    fields = training_arg_fields()
    problems: list[str] = []
    if "extra_args" in user and not isinstance(user["extra_args"], dict):
        problems.append(f"{prefix}.extra_args: expected a table")
    args = flatten(user)
    if fields is not None:
        known = set(fields) | set(OLIVE_ONLY_KEYS) | {k for k, v in ALIASES.items() if v in fields}
        for key, value in args.items():
            if key not in known:
                problems.append(f"{prefix}.{key}: unknown key{did_you_mean(key, sorted(known))}")
                continue
            annotation = fields.get(ALIASES.get(key, key)) if key not in fields else fields[key]
            if annotation and key != "warmup_ratio":
                message = _type_problem(value, annotation)
                if message:
                    problems.append(f"{prefix}.{key}: {message}")
    output_dir = args.get("output_dir")
    if isinstance(output_dir, str) and (Path(output_dir).is_absolute() or ".." in Path(output_dir).parts):
        problems.append(f"{prefix}.output_dir: must be a relative path without '..': checkpoints stay inside the "
                        f"step folder (so an interrupted step can resume), got {output_dir!r}")
    for key in POSITIVE_INTS:
        value = args.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            problems.append(f"{prefix}.{key}: must be >= 1, got {value}")
    if not cuda_visible():
        for key, what in GPU_ONLY.items():
            if what and args.get(key):
                problems.append(f"{prefix}.{key}: {what} needs a CUDA GPU, and none is visible "
                                "(leave it out on CPU; bf16 = true works on CPU but is slow without native bf16)")
        optim = args.get("optim")
        if isinstance(optim, str) and optim.startswith("paged_"):
            problems.append(f"{prefix}.optim: {optim!r} pages optimizer state through CUDA unified memory and needs "
                            "a CUDA GPU; use \"adamw_torch\" on CPU")
    return problems


def resolve_training_args(user: dict[str, Any], *, checkpoint_dir: Path, has_eval: bool,
                          defaults: dict[str, Any] | None = None, use_gpu: bool | None = None) -> dict[str, Any]:
    """The keyword arguments for ``transformers.TrainingArguments``.

    Layers, lowest first: Olive's defaults, ``defaults`` (a pass's own, e.g.
    QLoRA's optimizer), the user's table. ``output_dir`` goes under
    ``checkpoint_dir``; renamed fields are mapped to what the installed
    transformers has; Olive-only keys are dropped (the caller reads them).
    """
    args = {**OLIVE_DEFAULTS, **HOST_DEFAULTS, **(defaults or {}), **flatten(user)}
    for key in OLIVE_ONLY_KEYS:
        args.pop(key, None)
    args.pop("resume_from_checkpoint", None)  # a Trainer.train() argument; the caller handles it
    fields = training_arg_fields() or {}
    for old, new in ALIASES.items():
        if old in args and new in fields:  # prefer the current name (no deprecation warnings)
            value = args.pop(old)
            if old in user or new not in user:  # a user's value under the old name beats our default under the new
                args[new] = value
    sub = args.get("output_dir")
    args["output_dir"] = str(checkpoint_dir / sub) if sub else str(checkpoint_dir)
    if not has_eval:
        args["eval_strategy"] = "no"
    elif args.get("eval_strategy") in (None, "no"):
        args["eval_strategy"] = "steps"
    if "logging_steps" not in args:
        # ~100 points on the loss curve, at least one per 10 steps
        max_steps = args.get("max_steps", -1)
        args["logging_steps"] = max(1, min(10, max_steps // 100)) if isinstance(max_steps, int) and max_steps > 0 else 10
    if has_eval and "eval_steps" not in args:
        args["eval_steps"] = args["logging_steps"]
    if use_gpu is False:
        if str(args.get("optim", "")).startswith("paged_"):
            args["optim"] = "adamw_torch"
        args.setdefault("dataloader_pin_memory", False)
        # Without use_cpu, accelerate sets up no DDP on CPU under torchrun (each rank would train alone).
        args.setdefault("use_cpu", True)
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            args.setdefault("ddp_backend", "gloo")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        args.setdefault("ddp_find_unused_parameters", False)  # every LoRA weight takes part in each step
    return {k: v for k, v in args.items() if v is not None}
