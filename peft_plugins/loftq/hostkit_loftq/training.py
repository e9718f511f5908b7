"""The LoftQ pass: what LoftQ does differently from QLoRA, all of it.

Training is hostkit-lora's :class:`~hostkit_lora.training.LoraTraining` (data,
Trainer, resume, loss curve, adapter saving), on a 4-bit base prepared the way
hostkit-qlora's :class:`~hostkit_qlora.quantized.QLoraTraining` does it (nf4
settings, k-bit preparation, optimizer defaults, ``save_quant_config`` in the
output handle). LoftQ changes three hooks more:

``load_base``
    1. load the input model in full precision and put LoRA layers on it;
    2. LoftQ-initialise every targeted linear layer
       (:func:`hostkit_loftq.init.apply_loftq`): base weight := ``dequant(Q)``,
       ``lora_A`` / ``lora_B`` := the low-rank fit of ``W - dequant(Q)``;
    3. save the initial adapter to ``loftq_init_adapter/`` and the base with the
       new master weights (full precision, with config, generation config and
       tokenizer) to ``model/``;
    4. load ``model/`` in 4-bit nf4: quantizing ``dequant(Q)`` again gives ``Q``
       back exactly, so the quantized base is the one LoftQ optimised for.
``attach_adapter``
    make the saved initial adapter trainable on the 4-bit base
    (``PeftModel.from_pretrained(..., is_trainable=True)``), instead of a fresh
    zero-initialised one.
``default_target_modules``
    ``"all-linear"`` (every linear layer but the output one, as Olive's LoftQ),
    resolved on the full-precision model, before anything is quantized.

The output handle is ``HfModel(path=<step>/model, adapter_path=<step>/adapter)``,
plus the nf4 settings when ``save_quant_config`` (the default).

Under ``torchrun`` only the main process computes and writes ``model/``; the
other ranks wait at a barrier and then load it.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import torch

from hostkit import HfModel, PassError
from hostkit_lora.training import run_lora
from hostkit_qlora.quantized import QLoraTraining

from hostkit_loftq.config import LoftQConfig
from hostkit_loftq.init import apply_loftq

MODEL_DIR = "model"
INIT_ADAPTER_DIR = "loftq_init_adapter"
#: written last, so a resumed step knows model/ and loftq_init_adapter/ are whole
DONE_FILE = "loftq.json"


class LoftQTraining(QLoraTraining):
    """LoRA fine-tuning from a LoftQ initialisation on a 4-bit nf4 base (see the module doc)."""

    pass_name = "LoftQ"
    config: LoftQConfig

    def __init__(self, config: LoftQConfig, model: HfModel, context: Any):
        super().__init__(config, model, context)  # QLoRA refuses an already quantized input
        self.source = model
        self._full_precision = False

    # -- hooks -------------------------------------------------------------------

    def quantization(self) -> dict[str, Any] | None:
        # nf4 without double quantization (LoftQConfig fixes both, as Olive does), except while initialising
        return None if self._full_precision else super().quantization()

    def default_target_modules(self, model: Any) -> list[str] | str | None:
        # Olive's LoftQ adapts every quantized linear layer; peft's "all-linear" is that (all but the output layer).
        return "all-linear"

    def load_base(self) -> Any:
        out = self.context.output_dir
        model_dir, init_dir = out / MODEL_DIR, out / INIT_ADAPTER_DIR
        if self.context.run.world_size > 1:
            # The Trainer sets up torch.distributed only later; the other ranks must wait for model/ now.
            from accelerate import PartialState

            PartialState()
        if self.context.is_main_process:
            if self.context.resuming and (out / DONE_FILE).exists():
                self._report(json.loads((out / DONE_FILE).read_text()))
                self.context.note(loftq_init="reused from the interrupted run")
            else:
                self._initialise(model_dir, init_dir)
        self.context.run.barrier()
        self.handle = attrs.evolve(self.source, path=str(model_dir), tokenizer_path=None, gguf_file=None)
        self.context.progress(f"loading {MODEL_DIR}/ in 4-bit nf4")
        return super().load_base()

    def attach_adapter(self, model: Any, lora_config: Any) -> Any:
        import peft

        return peft.PeftModel.from_pretrained(model, str(self.context.output_dir / INIT_ADAPTER_DIR), is_trainable=True)

    # -- the LoftQ step ------------------------------------------------------------

    def _initialise(self, model_dir: Path, init_dir: Path) -> None:
        import peft

        context = self.context
        for stale in (model_dir, init_dir, context.output_dir / DONE_FILE):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        context.progress(f"loading {self.source.path} in {self.dtype_name} for the LoftQ initialisation")
        self._full_precision = True
        try:
            full = super().load_base()
        finally:
            self._full_precision = False
        lora_config = self.lora_config(full)
        try:
            peft_model = peft.get_peft_model(full, lora_config)
        except ValueError as exc:
            raise PassError(f"target_modules: {exc}") from exc

        def progress(name: str, index: int, total: int) -> None:
            context.progress(f"LoftQ init {name.removeprefix('base_model.model.')}", index + 1, total)

        report = apply_loftq(peft_model, num_iter=self.config.loftq_iter, progress=progress)
        if not report.layers:
            raise PassError("target_modules: no linear layer to initialise with LoftQ among the targets")
        # Loaded again from the file: do not let peft initialise it a second time.
        peft_model.peft_config["default"].init_lora_weights = True
        peft_model.save_pretrained(str(init_dir), save_embedding_layers=False)
        base = peft_model.unload()
        base.save_pretrained(str(model_dir))
        self.tokenizer.save_pretrained(str(model_dir))
        facts = {
            "loftq_iter": self.config.loftq_iter,
            "layers": len(report.layers),
            "skipped_layers": [n.removeprefix("base_model.model.") for n in report.skipped],
            "nf4_relative_error": report.nf4_relative_error,
            "loftq_relative_error": report.loftq_relative_error,
        }
        self._report(facts)
        (context.output_dir / DONE_FILE).write_text(json.dumps(facts, indent=2) + "\n")
        del peft_model, base, full
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _report(self, facts: dict[str, Any]) -> None:
        self.context.report_metric("loftq_nf4_relative_error", round(facts["nf4_relative_error"], 6))
        self.context.report_metric("loftq_relative_error", round(facts["loftq_relative_error"], 6))
        self.context.note(loftq_layers=facts["layers"],
                          **({"loftq_skipped_layers": facts["skipped_layers"]} if facts["skipped_layers"] else {}))


def run_loftq(config: LoftQConfig, model: HfModel, context: Any) -> HfModel:
    """Run one LoftQ pass and return the output handle."""
    return run_lora(config, model, context, training_cls=LoftQTraining)
