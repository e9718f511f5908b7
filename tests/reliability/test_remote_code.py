"""Issue 12.3: model code runs only when the run file says ``trust_remote_code = true``.

transformers asks on a terminal ("Do you wish to run the custom code? [y/N]") when a loader is
called without ``trust_remote_code``; answering y runs the model folder's code. So every
``from_pretrained`` of the host, of every plugin and of every command passes the handle's value
explicitly (or through a ``**`` helper that holds it). peft's ``PeftModel.from_pretrained``
loads adapter weights and runs no model code. The test kits (``hostkit/testing``, the plugins'
``testing.py``) load only the tiny models the tests build, so they are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_MODEL_CODE = ("PeftModel",)  # receivers whose from_pretrained runs no model-folder code


def _sources() -> list[Path]:
    files = list((ROOT / "hostkit").rglob("*.py"))
    for package in sorted((ROOT / "peft_plugins").glob("*/hostkit_*")):
        files += package.rglob("*.py")
    return sorted(f for f in files if "testing" not in f.relative_to(ROOT).parts and f.name != "testing.py")


def _receiver(call: ast.Call) -> str:
    value = call.func.value if isinstance(call.func, ast.Attribute) else None
    return ast.unparse(value) if value is not None else ""


def loads_without_trust_remote_code(path: Path) -> list[str]:
    """``file:line: call`` for each ``from_pretrained(...)`` call that does not pass trust_remote_code."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"):
            continue
        if _receiver(node).rsplit(".", 1)[-1] in NO_MODEL_CODE:
            continue
        keywords = {k.arg for k in node.keywords}
        if "trust_remote_code" in keywords or None in keywords:  # None: a ** mapping (a kwargs helper)
            continue
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        found.append(f"{where}:{node.lineno}: {ast.unparse(node)[:120]}")
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import transformers\n"
                      "transformers.AutoTokenizer.from_pretrained(p)\n"
                      "transformers.AutoTokenizer.from_pretrained(p, trust_remote_code=h.trust_remote_code)\n"
                      "AutoModel.from_pretrained(p, **kwargs_of(h))\n"
                      "peft.PeftModel.from_pretrained(m, p)\n")
    assert [line.split(": ", 1)[0] for line in loads_without_trust_remote_code(sample)] == ["sample.py:2"]


def test_every_from_pretrained_passes_trust_remote_code():
    missing = [hit for path in _sources() for hit in loads_without_trust_remote_code(path)]
    assert not missing, "from_pretrained without trust_remote_code:\n" + "\n".join(missing)
