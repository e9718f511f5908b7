"""The LoRA family's fine-tuning machinery: one class, small hooks, one Trainer.

LoRA (Hu et al., arXiv:2106.09685) freezes the base weights ``W`` and learns a
low-rank update: ``y = x W + (alpha / r) * x A B`` with ``A: [in, r]`` and
``B: [r, out]``, ``B`` starting at zero so training starts from the base model.

:class:`LoraTraining` runs one such fine-tuning from a hostkit ``HfModel``
handle: load the base, prepare it, attach a peft LoRA adapter, train with
``transformers.Trainer`` (resuming from the step folder's last checkpoint,
reporting the loss curve), save the adapter, return the new handle.

QLoRA and LoftQ are LoRA with a different base, so they subclass it and
override a few hooks instead of copying the loop (the order of the calls in
:meth:`LoraTraining.run`):

``quantization()``
    ``BitsAndBytesConfig`` keyword arguments the base is loaded with, or None.
    QLoRA returns its 4-bit settings; LoRA returns the input handle's (if an
    earlier pass quantized the base).
``load_base()``
    Build the transformers model (uses ``quantization()``, ``torch_dtype``,
    ``trust_remote_code``, the handle's ``load_kwargs``). LoftQ overrides it to
    compute its initialisation, write the new master weights and load those.
``precision_args(model, args)``
    With ``torch_dtype`` auto on CPU, turn on bf16 autocast where the CPU has
    native bf16 (:mod:`hostkit_lora.precision`).
``prepare_model(model)``
    Freeze the base and set up gradient checkpointing; QLoRA calls
    ``peft.prepare_model_for_kbit_training`` instead.
``default_target_modules(model)``
    Modules to adapt when ``target_modules`` is not set.
``lora_config(model)`` / ``attach_adapter(model, lora_config)``
    The ``peft.LoraConfig`` and the trainable ``PeftModel``; LoftQ overrides
    ``attach_adapter`` to start from its own A and B.
``training_defaults()``
    TrainingArguments defaults of this pass, under the user's values.
``scored_loss(model, training_args)``
    Compute the LM head and the loss only where labels are not -100
    (:mod:`hostkit_lora.scored`); return None to keep the full logits.
``low_memory_heap()``
    Whether to return freed large buffers to the OS at once (quantized base on
    CPU: lower peak, slower steps).
``output_handle(adapter_dir)``
    The handle this step returns (QLoRA adds ``quantization``).

Use::

    from hostkit_lora.training import LoraTraining, run_lora

    class QLoraTraining(LoraTraining):
        pass_name = "QLoRA"
        def quantization(self): return {"load_in_4bit": True, ...}

    handle = run_lora(config, model, context, training_cls=QLoraTraining)

Under ``torchrun`` every rank runs this; the Trainer wraps the model in DDP
(gloo on CPU, NCCL on GPU) and only the main process writes files.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch
import transformers
from transformers import TrainerCallback

from hostkit import HfModel, MissingRequirement, PassError
from hostkit_lora.data import load_rows

from hostkit_lora.config import LoRAConfig
from hostkit_lora.tokenization import Collator, causal_lm_dataset, classification_dataset, label_set
from hostkit_lora.training_args import resolve_training_args, training_arg_fields

TASK_TYPES = {"text-generation": "CAUSAL_LM", "text-classification": "SEQ_CLS"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"


def default_dtype(use_gpu: bool) -> str:
    """bfloat16 on a GPU (Olive's default); float32 on CPU, where bf16 without native support is 15-35x slower."""
    return "bfloat16" if use_gpu else "float32"


class LossCurve(TrainerCallback):
    """Reports the Trainer's logs to the host: ``train_loss`` and ``eval_loss`` curves, and progress."""

    def __init__(self, context: Any):
        self.context = context
        self.train: list[tuple[int, float]] = []
        self.eval: list[tuple[int, float]] = []

    def resumed_from(self, checkpoint: str) -> None:
        """Report the curve up to ``checkpoint`` from its ``trainer_state.json`` log history, so the curve
        (and loss.png) covers the whole training, not only the part after the resume."""
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        for entry in state.get("log_history", []):
            for key, curve in (("loss", self.train), ("eval_loss", self.eval)):
                if key in entry and "step" in entry:
                    curve.append((int(entry["step"]), float(entry[key])))
                    self.context.report_metric("train_loss" if key == "loss" else key, float(entry[key]),
                                               step=int(entry["step"]))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not logs:
            return
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            # a diverged run: stop here, write no adapter (every rank raises, the host names the step)
            raise PassError(f"the training loss became {float(loss)} at training step {state.global_step} "
                            f"(learning_rate {logs.get('learning_rate', args.learning_rate)}); no adapter written: "
                            "lower learning_rate, or set max_grad_norm")
        if not state.is_world_process_zero:
            return
        if "loss" in logs:
            self.train.append((state.global_step, float(logs["loss"])))
            self.context.report_metric("train_loss", float(logs["loss"]), step=state.global_step)
        if "eval_loss" in logs:
            self.eval.append((state.global_step, float(logs["eval_loss"])))
            self.context.report_metric("eval_loss", float(logs["eval_loss"]), step=state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.context.progress("training", state.global_step, state.max_steps or None)


class LoraTraining:
    """One LoRA fine-tuning of an ``HfModel``; subclass and override hooks for QLoRA/LoftQ (see the module doc)."""

    pass_name = "LoRA"

    def __init__(self, config: LoRAConfig, model: HfModel, context: Any):
        self.config = config
        self.handle = model
        self.context = context
        self.use_gpu = torch.cuda.is_available()
        dtype = config.torch_dtype or (model.torch_dtype if model.torch_dtype not in (None, "auto") else None)
        self.dtype_name = dtype or default_dtype(self.use_gpu)
        self.auto_dtype = dtype is None  # CPU: bf16 autocast where the CPU has native bf16 (see precision_args)
        if self.dtype_name == "float16" and not self.use_gpu:
            raise MissingRequirement("torch_dtype: float16 trains with fp16 mixed precision, which needs a CUDA GPU; "
                                     "use float32 on CPU")
        if model.task not in TASK_TYPES:
            raise PassError(f"model.task: {self.pass_name} supports {', '.join(TASK_TYPES)}, not {model.task!r}")
        if model.adapter_path:
            raise PassError(f"the input model already has an adapter ({model.adapter_path}); merge it first "
                            "(type = \"MergeAdapterWeights\") or start from the base model")
        self.task = model.task
        self.labels: list[str] | None = None
        self.tokenizer: Any = None
        self.checkpointing = False  # set from training_args in run(), before load_base()

    # -- hooks (override in QLoRA / LoftQ) -------------------------------------

    def quantization(self) -> dict[str, Any] | None:
        """BitsAndBytesConfig kwargs to load the base with (LoRA: whatever the input handle says)."""
        return self.handle.quantization

    def low_memory_heap(self) -> bool:
        """Whether to hand freed large buffers back to the OS at once (see :func:`fixed_mmap_threshold`):
        by default for a quantized base on CPU, whose layers dequantize a temporary weight at every use."""
        return bool(self.quantization()) and not self.use_gpu

    def training_defaults(self) -> dict[str, Any]:
        """TrainingArguments defaults of this pass, applied over Olive's and under the user's."""
        return {}

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``from_pretrained`` for the base."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.handle.trust_remote_code, **self.handle.load_kwargs}
        # float16 = fp32 master weights + fp16 autocast (as Olive does)
        kwargs["dtype"] = torch.float32 if self.dtype_name == "float16" else DTYPES[self.dtype_name]
        quantization = self.quantization()
        if quantization:
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(**quantization)
            if self.use_gpu:
                kwargs.setdefault("device_map", {"": int(os.environ.get("LOCAL_RANK", 0))})
        if self.task == "text-classification":
            assert self.labels is not None
            kwargs.update(num_labels=len(self.labels), id2label=dict(enumerate(self.labels)),
                          label2id={label: i for i, label in enumerate(self.labels)})
        return kwargs

    def load_base(self) -> Any:
        """The transformers model the adapter goes on."""
        auto = (transformers.AutoModelForCausalLM if self.task == "text-generation"
                else transformers.AutoModelForSequenceClassification)
        if self.low_memory_heap():
            fixed_mmap_threshold()
        try:
            model = auto.from_pretrained(self.handle.path, **self.load_kwargs())
        except (OSError, ValueError) as exc:
            raise PassError(f"model.path: cannot load {self.handle.path}: {exc}") from exc
        if self.quantization():
            release_checkpoint_file(model)
        if self.tokenizer is not None and getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def prepare_model(self, model: Any) -> Any:
        """Freeze the base; enable gradient checkpointing when asked for and supported."""
        for param in model.parameters():
            param.requires_grad_(False)
        if self.checkpointing:
            model.enable_input_require_grads()
            model.config.use_cache = False
        return model

    def default_target_modules(self, model: Any) -> list[str] | str | None:
        """None lets peft pick its per-architecture default; unknown architectures get all-linear."""
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as known

        return None if getattr(model.config, "model_type", None) in known else "all-linear"

    def lora_config(self, model: Any) -> Any:
        import peft

        target = self.config.target_modules
        if target is None:
            target = self.default_target_modules(model)
        return peft.LoraConfig(
            r=self.config.r, lora_alpha=self.config.alpha, lora_dropout=self.config.lora_dropout,
            target_modules=target, modules_to_save=self.config.modules_to_save,
            use_rslora=self.config.use_rslora, use_dora=self.config.use_dora, bias="none",
            task_type=TASK_TYPES[self.task],
        )

    def attach_adapter(self, model: Any, lora_config: Any) -> Any:
        import peft

        try:
            return peft.get_peft_model(model, lora_config)
        except ValueError as exc:  # e.g. target modules not found in the model
            raise PassError(f"target_modules: {exc}") from exc

    def precision_args(self, model: Any, args: dict[str, Any]) -> None:
        """With ``torch_dtype`` auto on CPU: bf16 autocast over the float32 base where the CPU has native bf16
        and it measures faster (:mod:`hostkit_lora.precision`); the choice and its reason go in the manifest."""
        if not self.auto_dtype or self.use_gpu:
            return
        if any(args.get(key) for key in ("bf16", "fp16")):
            self.context.note(precision="as training_args asks (bf16/fp16 set)")
            return
        if self.quantization():
            self.context.note(precision=f"{self.dtype_name}: a quantized base keeps its compute dtype")
            return
        from hostkit_lora.precision import auto_precision

        chosen = auto_precision(use_gpu=False, width=getattr(model.config, "hidden_size", None))
        if chosen.bf16_autocast:
            args["bf16"] = True
        self.context.note(precision=chosen.reason)

    def padding_free(self) -> bool:
        """Whether batches are one row of whole examples (``packing = "padding_free"`` on the train data)."""
        packing = getattr(self.context.data_config(self.config.train_data_config), "packing", "none")
        return self.task == "text-generation" and packing == "padding_free"

    def scored_loss(self, model: Any, training_args: Any) -> Any:
        """Install the LM head + loss at scored positions only (:mod:`hostkit_lora.scored`) on a causal LM;
        returns what to ``remove()`` after training, or None (the reason goes in the manifest)."""
        if self.task != "text-generation":
            return None
        from hostkit_lora.scored import install_scored_loss

        if getattr(training_args, "label_smoothing_factor", 0):
            reason = "label_smoothing_factor needs the full logits"
        else:
            installed = install_scored_loss(model)
            if not isinstance(installed, str):
                self.context.note(scored_positions_only=f"on (chunks of {installed.chunk_rows} positions)")
                return installed
            reason = installed
        self.context.note(scored_positions_only=f"off: {reason}")
        return None

    def output_handle(self, adapter_dir: Path) -> HfModel:
        changes: dict[str, Any] = {"adapter_path": str(adapter_dir)}
        if self.labels is not None:
            changes["num_labels"] = len(self.labels)
        return attrs.evolve(self.handle, **changes)

    # -- the fixed part ---------------------------------------------------------

    def load_tokenizer(self) -> Any:
        path = self.handle.tokenizer_path or self.handle.path
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=self.handle.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise PassError(f"model: cannot load a tokenizer from {path}: {exc}") from exc
        if tokenizer.pad_token is None:
            # Olive's choice; the collator labels padding -100, so EOS still trains where it is real.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            self.context.note(pad_token_set=tokenizer.pad_token)
        tokenizer.padding_side = "right"
        return tokenizer

    def build_dataset(self, name: str) -> Any:
        data_config = self.context.data_config(name)
        rows = load_rows(data_config, name)
        if self.task == "text-classification":
            if self.labels is None:
                self.labels = label_set(rows, data_config, name)
            return classification_dataset(rows, data_config, name, self.tokenizer, self.labels)
        return causal_lm_dataset(rows, data_config, name, self.tokenizer)

    def training_args(self) -> Any:
        args = resolve_training_args(
            self.config.training_args, checkpoint_dir=self.context.output_dir / CHECKPOINT_DIR,
            has_eval=self.config.eval_data_config is not None, defaults=self.training_defaults(),
            use_gpu=self.use_gpu)
        if self.dtype_name == "float16":
            args["fp16"] = True
        # the manifest's train_tokens / train_tokens_per_s count real (non-padding) tokens
        if "str" in (training_arg_fields() or {}).get("include_num_input_tokens_seen", ""):
            args.setdefault("include_num_input_tokens_seen", "non_padding")
        return args

    def _checkpoint_to_resume(self, output_dir: str) -> str | None:
        user = self.config.training_args
        if user.get("resume_from_checkpoint"):
            path = Path(output_dir) / str(user["resume_from_checkpoint"])
            return str(path) if path.exists() else str(user["resume_from_checkpoint"])
        if not self.context.resuming or user.get("overwrite_output_dir") or not Path(output_dir).is_dir():
            return None
        return last_complete_checkpoint(Path(output_dir), say=lambda line: print(f"    warning: {line}",
                                                                                 file=self.context.run.stream))

    def run(self) -> HfModel:
        with warnings.catch_warnings():
            # peft and the Trainer still call transformers' deprecated gradient_checkpointing names
            warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)
            return self._run()

    def _run(self) -> HfModel:
        context = self.context
        # torch, transformers and peft leave ~500k objects that live until exit; each full collection walks them
        # all (0.3 s), the interpreter's teardown runs several (1.5 s from the last output line to exit).
        # Frozen, they are never walked again: the pass's own garbage is still collected.
        gc.freeze()
        transformers.utils.logging.disable_progress_bar()
        self.tokenizer = self.load_tokenizer()
        train_dataset = self.build_dataset(self.config.train_data_config)
        eval_dataset = self.build_dataset(self.config.eval_data_config) if self.config.eval_data_config else None

        args = self.training_args()
        key = "activation_checkpointing" if "activation_checkpointing" in (training_arg_fields() or {}) else "gradient_checkpointing"
        self.checkpointing = bool(args.get(key))
        context.progress(f"loading {self.handle.path}")
        model = self.load_base()
        if self.checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
            self.checkpointing = args[key] = False
            context.note(gradient_checkpointing="disabled: the model does not support it")
        if self.checkpointing:
            args.setdefault(f"{key}_kwargs", {"use_reentrant": False})
        self.precision_args(model, args)
        model = self.prepare_model(model)
        if getattr(model, "config", None) is not None:
            # training never reuses a KV cache; and with one, transformers ignores packed position_ids and lets
            # the examples of a packed row attend to each other (packing = "join" / "padding_free")
            model.config.use_cache = False
        transformers.set_seed(args.get("seed", 42))  # the LoRA A init draws from the global RNG: reproducible runs
        model = self.attach_adapter(model, self.lora_config(model))
        trainable, total = _count_parameters(model)
        context.note(torch_dtype=self.dtype_name, trainable_parameters=trainable, total_parameters=total,
                     target_modules=sorted(_as_list(model.peft_config["default"].target_modules)))
        if self.labels is not None:
            context.note(labels=self.labels)

        training_args = transformers.TrainingArguments(**args)
        context.note(world_size=training_args.world_size)  # > 1: the Trainer runs DDP
        scored = self.scored_loss(model, training_args)
        curve = LossCurve(context)
        trainer = transformers.Trainer(
            model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            data_collator=Collator(self.tokenizer.pad_token_id, padding_free=self.padding_free()), callbacks=[curve],
        )
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # the host shows progress
        resume = self._checkpoint_to_resume(training_args.output_dir)
        if resume:
            context.note(resumed_from=os.path.relpath(resume, context.output_dir))
            curve.resumed_from(resume)
        result = trainer.train(resume_from_checkpoint=resume)
        context.report_metric("train_runtime_s", round(float(result.metrics.get("train_runtime", 0.0)), 3))
        context.report_metric("train_steps", int(result.global_step))
        tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
        if tokens and training_args.include_num_input_tokens_seen == "non_padding":
            context.report_metric("train_tokens", tokens)  # real (non-padding) tokens, all ranks
            runtime = float(result.metrics.get("train_runtime", 0.0))
            if runtime > 0:
                context.report_metric("train_tokens_per_s", round(tokens / runtime, 1))
        if eval_dataset is not None:
            if not curve.eval or curve.eval[-1][0] != result.global_step:
                trainer.evaluate()  # LossCurve.on_log records it at this step
            context.report_metric("final_eval_loss", curve.eval[-1][1])
        if curve.train:
            context.report_metric("final_train_loss", curve.train[-1][1])
        if scored is not None:
            scored.remove()

        adapter_dir = context.output_dir / ADAPTER_DIR
        if context.is_main_process:
            peft_model = trainer.model
            peft_model.save_pretrained(str(adapter_dir), save_embedding_layers=False)
            self.tokenizer.save_pretrained(str(adapter_dir))
            if curve.train or curve.eval:
                from hostkit_lora.plot import plot_loss

                plot_loss(context.output_dir / "loss.png", curve.train, curve.eval, title=f"{self.pass_name} loss")
        context.run.barrier()
        if context.is_main_process and not self.config.keep_checkpoints:
            shutil.rmtree(context.output_dir / CHECKPOINT_DIR, ignore_errors=True)
        handle = self.output_handle(adapter_dir)
        del trainer, model
        gc.collect()
        gc.freeze()  # see _run's start
        return handle


def checkpoint_problem(path: Path) -> str | None:
    """Why ``checkpoint-N`` cannot be resumed from (a kill during a save leaves it half written), or None."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError) as exc:
        return f"trainer_state.json unreadable ({exc})"
    if not isinstance(state, dict) or "global_step" not in state:
        return "trainer_state.json has no global_step"
    weights = [p for p in path.glob("adapter_model.*") if p.suffix in (".safetensors", ".bin")]
    if not weights:
        return "no adapter weights"
    for file in weights:
        if file.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(file), framework="pt"):
                    pass
            except Exception as exc:  # noqa: BLE001
                return f"{file.name} unreadable ({exc})"
    return None


def last_complete_checkpoint(folder: Path, say: Any = None) -> str | None:
    """The newest ``checkpoint-N`` that can be resumed from; newer broken ones are renamed ``broken-checkpoint-N``
    (out of the Trainer's way) and reported through ``say``."""
    found = sorted(((int(p.name.rsplit("-", 1)[1]), p) for p in folder.glob("checkpoint-*")
                    if p.name.rsplit("-", 1)[1].isdigit()), reverse=True)
    skipped = []
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped and say is not None:
                say(f"{', '.join(f'{p.name} ({why})' for p, why in skipped)}: incomplete; resuming from {path.name}")
            return str(path)
        skipped.append((path, problem))
        path.rename(path.with_name(f"broken-{path.name}"))
    if skipped and say is not None:
        say(f"{', '.join(f'{p.name} ({why})' for p, why in skipped)}: incomplete; starting afresh")
    return None


def fixed_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Stop glibc from keeping freed large buffers in the heap (CPU training of a quantized base).

    A 4-bit layer dequantizes its weight into a temporary fp32 buffer on every
    forward and backward. glibc raises its mmap threshold each time such a
    buffer is freed, so later ones come from the heap and stay resident: on
    the 88M model QLoRA's batch-1 training peak was 321 MB above the imports
    instead of 164 MB. A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``, what
    ``MALLOC_MMAP_THRESHOLD_`` does) hands them back at once, at the price of
    page faults: steps ran ~1.7x slower there. Process-wide; False where this
    is not glibc.
    """
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def release_checkpoint_file(model: Any) -> None:
    """Let go of the memory-mapped checkpoint after a quantized load.

    transformers keeps the tensors it did not quantize (embeddings, norms,
    lm_head) as views of the mmapped safetensors file, which keeps the whole
    file mapped, and every page the quantizer read stays resident: on an 88M
    model ~295 MB of fp32 pages next to 42 MB of nf4 weights, erasing QLoRA's
    saving. Copying those few tensors drops the last reference to the mapping;
    ``malloc_trim`` hands the quantizer's freed scratch memory back to the OS.
    """
    seen: set[int] = set()
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if id(param) in seen or type(param).__name__ in ("Params4bit", "Int8Params"):
                continue
            seen.add(id(param))
            param.data = param.data.clone()
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and id(buffer) not in seen:
                seen.add(id(buffer))
                module._buffers[name] = buffer.clone()
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _count_parameters(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for param in model.parameters():
        # bitsandbytes packs two 4-bit values per byte
        n = param.numel() * (2 if param.dtype == torch.uint8 else 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def run_lora(config: LoRAConfig, model: HfModel, context: Any, *,
             training_cls: type[LoraTraining] = LoraTraining) -> HfModel:
    """Run one LoRA-family fine-tuning and return the output handle (see :class:`LoraTraining`)."""
    return training_cls(config, model, context).run()


__all__ = ["LoraTraining", "LossCurve", "default_dtype", "fixed_mmap_threshold", "release_checkpoint_file", "run_lora"]
