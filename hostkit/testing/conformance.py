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
model with an output handle that round-trips through JSON.
"""

from __future__ import annotations

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

    # -- helpers ---------------------------------------------------------------

    def _host(self) -> PluginHost:
        return PluginHost.discover(env={})

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
        host = self._host()
        assert not host.registry.contest(self.pass_type), host.provider_problem(self.pass_type)
        spec = self._spec()
        assert spec.plugin is not None and spec.plugin.name == self.plugin_name, spec.plugin
        if isinstance(spec.run, str):  # importable, without running it
            import importlib.util

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

        text = textwrap.dedent(self.run_file).replace("{tiny_llama}", str(tiny_llama))
        result = run_toml(text, tmp_path)
        assert result.exit_code == 0, result.output
        manifest = result.manifest
        assert manifest and manifest["status"] == "ok"
        out = manifest["steps"][-1]["output"]
        assert handles.to_json(handles.from_json(json.loads(json.dumps(out)), self._host().registry.handle_types())) == out
