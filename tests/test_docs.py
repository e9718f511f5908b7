"""Meta-tests (datasette style): the plugin author's documentation cannot drift from the code.

* every hookspec in ``hostkit/hookspecs.py`` has a heading in
  ``docs/writing-plugins.md`` and a test under ``tests/`` that names it;
* every name ``import hostkit`` exports is described in the guide;
* every example the guide marks ``<!-- runnable -->`` runs, and the worked
  example marked ``<!-- runnable id=scale-adapter -->`` runs as a test of its own;
* every plugin folder ``peft_plugins/*/`` has a README whose option table for
  each pass type it registers is exactly what its attrs config class generates
  (fix with ``python tools/update_readme_tables.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hostkit
from hostkit import hookspecs
from hostkit.scaffold import readme_problems

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-plugins.md"
TESTS = ROOT / "tests"
# plugin folders: a pyproject with entry points (peft_plugins/adapters is a library, no pass)
PLUGIN_FOLDERS = sorted(p for p in (ROOT / "peft_plugins").glob("*/") if (p / "pyproject.toml").is_file()
                        and "hostkit.plugins" in (p / "pyproject.toml").read_text(encoding="utf-8"))

HOOKS = sorted(name for name, obj in vars(hookspecs).items()
               if name.startswith("hostkit_") and callable(obj) and hasattr(obj, "hostkit_spec"))
RUNNABLE = re.compile(r"<!-- runnable -->\s*\n```python\n(.*?)\n```", re.S)


def runnable_block(guide: str, block_id: str) -> str:
    """The code of the guide's ``<!-- runnable id=BLOCK_ID -->`` example."""
    found = re.findall(rf"<!-- runnable id={re.escape(block_id)} -->\s*\n```python\n(.*?)\n```", guide, re.S)
    assert len(found) == 1, f"docs/writing-plugins.md has {len(found)} examples marked runnable id={block_id}"
    return found[0]


def _guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def _headings() -> list[str]:
    return [line for line in _guide().splitlines() if line.startswith("#")]


def _test_sources() -> dict[Path, str]:
    me = Path(__file__).resolve()
    return {p: p.read_text(encoding="utf-8") for p in TESTS.rglob("*.py") if p.resolve() != me}


def test_hookspecs_are_found():
    assert "hostkit_register" in HOOKS and "hostkit_run_pass" in HOOKS and len(HOOKS) >= 10, HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_is_documented(hook):
    assert any(re.search(rf"\b{hook}\b", h) for h in _headings()), (
        f"{hook} is a hookspec but docs/writing-plugins.md has no heading for it: "
        f"add a '### `{hook}`' section with its signature and an example")


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_a_test(hook):
    mentions = [p for p, text in _test_sources().items() if re.search(rf"\b{hook}\b", text)]
    assert mentions, f"{hook} is a hookspec but no test under tests/ mentions it (test_docs.py does not count)"


@pytest.mark.parametrize("name", sorted(n for n in hostkit.__all__ if not n.startswith("_")))
def test_public_api_is_documented(name):
    assert f"`{name}`" in _guide(), f"hostkit.{name} is exported but docs/writing-plugins.md does not describe it"


def test_guide_links_resolve():
    anchors = set()
    for heading in _headings():
        text = heading.lstrip("#").strip().lower().replace("`", "")
        anchors.add(re.sub(r"[^a-z0-9 _-]", "", text).replace(" ", "-"))
    missing = sorted({a for a in re.findall(r"\]\(#([^)]+)\)", _guide()) if a not in anchors})
    assert not missing, f"links to missing sections: {missing}"


def _runnable_examples() -> list:
    blocks = RUNNABLE.findall(_guide())
    return [pytest.param(code, id=f"example{i}") for i, code in enumerate(blocks, 1)]


def test_guide_has_runnable_examples():
    assert len(_runnable_examples()) >= 6


@pytest.mark.parametrize("code", _runnable_examples())
def test_guide_example_runs(code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTKIT_")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    imported = [m for m in ("torch", "transformers") if f"import {m}" in code]
    assert not imported, "the hook examples must stay torch-free (fast, and runnable anywhere)"


@pytest.mark.slow
def test_adapter_worked_example_runs(tmp_path):
    """The guide's adapter-in / adapter-out example (ScaleAdapter): its own asserts compare the output
    adapter's logits with peft's (the input adapter, scaling halved) and show the validate error."""
    code = runnable_block(_guide(), "scale-adapter")
    script = tmp_path / "scale_adapter.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTKIT_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "'adapter_config.json', 'adapter_model.safetensors'" in done.stdout
    assert "needs an input with adapter_path set, but [model] has no adapter_path" in done.stdout


@pytest.mark.parametrize("folder", PLUGIN_FOLDERS, ids=[p.name for p in PLUGIN_FOLDERS])
def test_plugin_readme_option_tables(folder):
    problems = readme_problems(folder)
    assert not problems, "\n".join(problems) + "\n(regenerate: python tools/update_readme_tables.py)"
