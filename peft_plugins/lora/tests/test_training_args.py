"""training_args: checked without importing transformers, resolved over Olive's defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hostkit_lora.training_args import check_training_args, resolve_training_args, training_arg_fields


def test_fields_are_read_from_the_installed_transformers_without_importing_it():
    code = ("import sys; from hostkit_lora.training_args import training_arg_fields as f; "
            "names = f(); print(len(names), 'learning_rate' in names, 'transformers' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 50 and out[1:] == ["True", "False", "False"]


def test_unknown_key_has_a_hint_and_types_are_checked():
    problems = check_training_args({"learnin_rate": 1e-3, "max_steps": "ten", "learning_rate": 1, "seed": 1.5})
    assert "training_args.learnin_rate: unknown key (did you mean 'learning_rate'?)" in problems
    assert any(p.startswith("training_args.max_steps: expected int") for p in problems)
    assert any(p.startswith("training_args.seed: expected int") for p in problems)
    assert len(problems) == 3  # an int learning_rate is a fine float


def test_gpu_only_settings_fail_on_a_cpu_machine(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    problems = check_training_args({"fp16": True, "optim": "paged_adamw_32bit", "bf16": True})
    assert any(p.startswith("training_args.fp16: fp16 mixed precision needs a CUDA GPU") for p in problems)
    assert any(p.startswith("training_args.optim: 'paged_adamw_32bit'") for p in problems)
    assert not any("bf16" in p.split(":")[0] for p in problems)  # bf16 works on CPU (slowly)


def test_olive_compat_keys_are_accepted():
    assert check_training_args({"warmup_ratio": 0.1, "overwrite_output_dir": True, "gradient_checkpointing": False,
                                "extra_args": {"seed": 3}}) == []
    assert check_training_args({"extra_args": {"sed": 3}}) == ["training_args.sed: unknown key (did you mean 'seed'?)"]


def test_resolution_layers_olive_defaults_under_the_user(tmp_path: Path):
    fields = training_arg_fields()
    args = resolve_training_args({"max_steps": 300, "learning_rate": 1e-3, "output_dir": "ck"},
                                 checkpoint_dir=tmp_path, has_eval=True, defaults={"optim": "paged_adamw_32bit"},
                                 use_gpu=False)
    assert args["learning_rate"] == 1e-3 and args["lr_scheduler_type"] == "constant"
    assert args["report_to"] == "none" and args["optim"] == "adamw_torch"  # paged optimizers need CUDA
    assert args["output_dir"] == str(tmp_path / "ck")
    assert args["eval_strategy"] == "steps" and args["logging_steps"] == 3 and args["eval_steps"] == 3
    # renamed fields go to whatever the installed transformers calls them
    warm = "warmup_steps" if "warmup_ratio" not in fields else "warmup_ratio"
    assert args[warm] == 0.03
    ckpt = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    assert args[ckpt] is True
    assert set(args) <= set(fields)
    no_eval = resolve_training_args({}, checkpoint_dir=tmp_path, has_eval=False)
    assert no_eval["eval_strategy"] == "no" and no_eval["logging_steps"] == 10
