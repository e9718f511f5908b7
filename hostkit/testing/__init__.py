"""hostkit.testing: a pytest plugin for hostkit and its plugin authors.

Opt in from a ``conftest.py``::

    pytest_plugins = ["hostkit.testing"]

Fixtures:

* ``plugin_host``: an isolated :class:`hostkit.PluginHost` (built-ins only, no
  entry-point scan); add your plugin with ``register_plugin(plugin_host, module)``;
* ``discovered_host``: a host with every installed plugin (entry points);
* ``tiny_llama``: a folder with a 2-layer Llama model and a locally trained
  tokenizer, built once per session on CPU;
* ``tiny_lora``: a PEFT LoRA adapter folder on ``tiny_llama`` (random B, so it
  changes the logits; r=4 on q_proj, v_proj, up_proj; with the tokenizer files),
  as the LoRA family writes it; built once per session;
* ``tiny_jsonl``: a small jsonl file (8 rows with ``text``, ``prompt``, ``response``);
* ``run_toml``: ``run_toml(text, host=None, command="run") -> RunResult``,
  running a run file in a temporary folder;
* ``one_thread``: torch on one thread for a test module (module scope).

Conformance: subclass :class:`hostkit.testing.conformance.PassConformance`.
Loading and comparing handles in torch: :mod:`hostkit.testing.models`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hostkit.testing.runs import RunResult, run_toml as _run_toml

__all__ = ["RunResult", "register_plugin", "tiny_jsonl_file", "tiny_lora_dir", "tiny_model_dir"]


def register_plugin(host: Any, plugin: Any, name: str | None = None, *, distribution: str | None = None,
                    version: str | None = None) -> Any:
    """Register ``plugin`` (a module or an object with hookimpls) on ``host`` for one test.

    Raises if the plugin turns out broken, with the recorded error.
    """
    from hostkit.plugins import PluginRecord

    name = name or getattr(plugin, "__name__", type(plugin).__name__)
    record = host.add_plugin(plugin, PluginRecord(name=name, distribution=distribution, version=version))
    if record.status == "broken":
        raise AssertionError(record.error)
    return record


def tiny_model_dir(root: Path, kind: str = "llama") -> Path:
    """The tiny model folder under ``root``, built there unless it is already complete."""
    target = Path(root) / f"tiny-{kind}"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from hostkit.testing.tiny import build_tiny_llama

    return build_tiny_llama(target)


def tiny_lora_dir(root: Path, base: Path) -> Path:
    """The tiny LoRA adapter folder under ``root`` for the model in ``base``, built there unless complete."""
    target = Path(root) / "tiny-lora"
    if (target / "adapter_config.json").is_file() and (target / "adapter_model.safetensors").is_file():
        return target
    from hostkit.testing.tiny import build_tiny_lora

    return build_tiny_lora(base, target)


def tiny_jsonl_file(root: Path) -> Path:
    """The tiny jsonl file under ``root`` (:data:`hostkit.testing.tiny.TINY_ROWS`)."""
    from hostkit.testing.tiny import write_tiny_jsonl

    return write_tiny_jsonl(Path(root) / "tiny.jsonl")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test module (on 2 shared cores, 10-50x faster for tiny models);
    opt in with an autouse fixture that requests it, or ``@pytest.mark.usefixtures("one_thread")``."""
    import os

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


@pytest.fixture
def plugin_host():
    from hostkit.plugins import PluginHost

    return PluginHost.isolated()


@pytest.fixture
def discovered_host():
    from hostkit.plugins import PluginHost

    return PluginHost.discover(env={})


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("hostkit-models"))


@pytest.fixture(scope="session")
def tiny_lora(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_lora_dir(tmp_path_factory.mktemp("hostkit-adapters"), tiny_llama)


@pytest.fixture(scope="session")
def tiny_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_jsonl_file(tmp_path_factory.mktemp("hostkit-data"))


@pytest.fixture
def run_toml(tmp_path: Path):
    def run(text: str, host: Any = None, command: str = "run", extra_args: tuple[str, ...] = (),
            workdir: Path | None = None) -> RunResult:
        return _run_toml(text, workdir or tmp_path, host=host, command=command, extra_args=extra_args)

    return run
