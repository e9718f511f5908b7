"""Run files for tests of the LoRA family (hostkit-lora and the plugins built on it).

TOML text only, no heavy imports; the models and data come from :mod:`hostkit.testing`
(``tiny_llama``, ``data_dir`` with its ``qa.jsonl``).
"""

from __future__ import annotations

from pathlib import Path


def qa_table(data_dir: Path, name: str = "train") -> str:
    """``[data.NAME]`` over the kit's ``qa.jsonl``: question/answer rows through one text template."""
    return f'''
[data.{name}]
type = "jsonl"
path = "{Path(data_dir) / 'qa.jsonl'}"
text_template = "### Q: {{question}}\\n### A: {{answer}}"
max_seq_len = 32
'''


def run_file(model: Path, data_dir: Path, *, passes: str, data_tables: str | None = None,
             task: str = "text-generation") -> str:
    """A run file: ``[model]`` (an HfModel folder), the data tables (default: :func:`qa_table`), the passes."""
    return f'''
[model]
type = "HfModel"
path = "{model}"
task = "{task}"
{data_tables or qa_table(data_dir)}
{passes}
[output]
dir = "out"
'''


def lora_run(model: Path, data: Path, *, max_steps: int, save_steps: int | None = 500, batch: int = 2,
             options: str = "", training_args: str = "", pass_type: str = "LoRA", r: int = 4,
             max_seq_len: int = 24) -> str:
    """One small pass of the LoRA family (``pass_type``) on a plain-text JSONL file; checkpoints every
    ``save_steps`` (None: the Trainer's default)."""
    save = f"save_steps = {save_steps}\n" if save_steps is not None else ""
    return f'''
[model]
type = "HfModel"
path = "{model}"
[data.train]
type = "jsonl"
path = "{data}"
max_seq_len = {max_seq_len}
[[passes]]
type = "{pass_type}"
r = {r}
train_data_config = "train"
{options}
[passes.training_args]
max_steps = {max_steps}
{save}per_device_train_batch_size = {batch}
{training_args}
[output]
dir = "out"
'''
