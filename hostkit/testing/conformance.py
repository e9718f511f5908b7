"""A conformance suite plugin authors subclass.

```python
from hostkit.testing.conformance import PassConformance

class TestMyPass(PassConformance):
    plugin_name = "prune"                 # entry-point name
    pass_type = "Prune"
    valid_options = {"amount": 0.3}
    invalid_options = [({"amount": "lots"}, "amount")]
    run_file = '''
    [model]
    type = "HfModel"
    path = "{tiny_llama}"
    [[passes]]
    type = "Prune"
    [output]
    dir = "out"
    '''
```

Each test checks one promise a plugin makes to the host and its users: it is
discoverable through its entry point, importing it pulls no heavy library, its
config class is frozen, documented and round-trips, invalid options are
reported with their TOML path, its ``PassSpec(run=...)`` entry is its own
(importable, not contested by another plugin), and the pass runs on the tiny
model with an output handle that round-trips through JSON (and, when the output
has an ``adapter_path`` and peft is installed, an adapter that loads in peft).

``run_file`` placeholders: ``{tiny_llama}`` (the tiny model folder),
``{tiny_lora}`` (a PEFT LoRA adapter on it, random B: set it as the model's
``adapter_path``) and ``{tiny_jsonl}`` (a small jsonl file), so that a pass
whose input must be an adapter or data needs no other plugin to prepare it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from hostkit.plugins import ENTRY_POINT_GROUP, PluginHost

#: what importing a plugin module must not import (DESIGN.md: heavy imports happen when a pass runs)
HEAVY_MODULES = ("torch", "transformers", "peft", "bitsandbytes", "onnxruntime", "datasets", "onnx")
#: ``{name}`` in a conformance ``run_file`` -> the path of the hostkit.testing fixture of that name
PLACEHOLDERS = ("tiny_llama", "tiny_lora", "tiny_jsonl")


class PassConformance:
    """Subclass and set the class attributes; every ``test_*`` method then runs."""

    plugin_name: ClassVar[str] = ""
    pass_type: ClassVar[str] = ""
    valid_options: ClassVar[dict[str, Any]] = {}
    invalid_options: ClassVar[list[tuple[dict[str, Any], str]]] = []
    #: a run file; ``{tiny_llama}`` is replaced by the tiny model folder. None skips the run test.
    run_file: ClassVar[str | None] = None
    #: extra heavy modules the plugin must not import at import time
    heavy_modules: ClassVar[tuple[str, ...]] = HEAVY_MODULES
    #: the plugins loaded besides this one (as HOSTKIT_LOAD_PLUGINS does): None, every installed plugin;
    #: () this plugin alone, so that the run test proves it needs no other
    load_only: ClassVar[tuple[str, ...] | None] = None
    #: load an output handle's ``adapter_path`` in peft over its base (when peft is installed); False for a
    #: pass whose "adapter" is not a PEFT one
    check_adapter_loads: ClassVar[bool] = True

    # -- helpers ---------------------------------------------------------------

    def _host(self) -> PluginHost:
        if self.load_only is None:
            return PluginHost.discover(env={})
        return PluginHost.discover(env={"HOSTKIT_LOAD_PLUGINS": ",".join((self.plugin_name, *self.load_only))})

    def _fill(self, text: str, tiny_llama: Path, tmp_path: Path) -> str:
        """The run file with its placeholders replaced; each input is built only when its placeholder is used
        (the adapter beside the session's tiny model, once per session, as the ``tiny_lora`` fixture does)."""
        from hostkit.testing import tiny_jsonl_file, tiny_lora_dir

        inputs = {"tiny_llama": lambda: tiny_llama, "tiny_lora": lambda: tiny_lora_dir(tiny_llama.parent, tiny_llama),
                  "tiny_jsonl": lambda: tiny_jsonl_file(tmp_path / "inputs")}
        for name in PLACEHOLDERS:
            if "{" + name + "}" in text:
                text = text.replace("{" + name + "}", str(inputs[name]()))
        return text

    def _spec(self) -> Any:
        spec = self._host().registry.find_pass(self.pass_type)
        assert spec is not None, f"pass type {self.pass_type!r} is not registered by any installed plugin"
        return spec

    def _entry_point(self) -> metadata.EntryPoint:
        eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == self.plugin_name]
        assert eps, f"no entry point {self.plugin_name!r} in group {ENTRY_POINT_GROUP!r}: is the plugin installed?"
        return eps[0]

    # -- the promises ----------------------------------------------------------

    def test_discoverable(self) -> None:
        self._entry_point()
        record = self._host().records[self.plugin_name]
        assert record.status == "loaded", record.error
        assert self.pass_type in record.provides

    def test_run_entry_is_its_own(self) -> None:
        host = PluginHost.discover(env={})  # every installed plugin: another one may register this pass type
        assert not host.registry.contest(self.pass_type), host.provider_problem(self.pass_type)
        spec = self._spec()
        assert spec.plugin is not None and spec.plugin.name == self.plugin_name, spec.plugin
        if isinstance(spec.run, str):  # importable, without running it
            module = spec.run.partition(":")[0]
            assert importlib.util.find_spec(module) is not None, f"run = {spec.run!r}: no module {module!r}"
        else:
            assert callable(spec.run)

    def test_import_is_light(self) -> None:
        module = self._entry_point().value.split(":")[0]
        code = (f"import sys, {module}; "
                f"print(','.join(m for m in {list(self.heavy_modules)!r} if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "", f"importing {module} imported: {out.stdout.strip()}"

    def test_config_is_frozen_and_documented(self) -> None:
        cls = self._spec().config_cls
        assert attrs.has(cls), f"{cls.__name__} is not an attrs class"
        undocumented = [f.name for f in attrs.fields(cls) if not (f.metadata or {}).get("help")]
        assert not undocumented, f"options without help: {undocumented}"
        from hostkit.converter import structure_strict

        instance = structure_strict(dict(self.valid_options), cls, "passes[0]")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(instance, attrs.fields(cls)[0].name, None)

    def test_config_round_trips(self) -> None:
        from hostkit.converter import converter, structure_strict

        cls = self._spec().config_cls
        instance = structure_strict(dict(self.valid_options), cls, "passes[0]")
        again = structure_strict(json.loads(json.dumps(converter.unstructure(instance))), cls, "passes[0]")
        assert again == instance

    def test_invalid_options_name_their_path(self, tmp_path: Path) -> None:
        from hostkit.errors import ConfigError
        from hostkit.converter import structure_strict

        cls = self._spec().config_cls
        for options, key in self.invalid_options:
            with pytest.raises(ConfigError) as info:
                structure_strict({**self.valid_options, **options}, cls, f"passes[0] ({self.pass_type})")
            text = str(info.value)
            assert f"passes[0] ({self.pass_type}).{key}" in text or f"passes[0] ({self.pass_type}): " in text, text

    def test_runs_on_tiny_model(self, tiny_llama: Path, tmp_path: Path) -> None:
        if self.run_file is None:
            pytest.skip("no run_file given")
        from hostkit import handles
        from hostkit.testing.runs import run_toml

        host = self._host()
        text = self._fill(textwrap.dedent(self.run_file), tiny_llama, tmp_path)
        result = run_toml(text, tmp_path, host=host)
        assert result.exit_code == 0, result.output
        manifest = result.manifest
        assert manifest and manifest["status"] == "ok"
        out = manifest["steps"][-1]["output"]
        handle = handles.from_json(json.loads(json.dumps(out)), host.registry.handle_types())
        assert handles.to_json(handle) == out
        if (self.check_adapter_loads and getattr(handle, "adapter_path", None)
                and importlib.util.find_spec("peft") is not None):
            from hostkit.testing.models import check_adapter_loads

            problem = check_adapter_loads(handle)
            assert problem is None, problem
