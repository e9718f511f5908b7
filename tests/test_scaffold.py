"""``hostkit new-plugin``: the scaffolded package is a working plugin out of the box.

The end-to-end test installs it (editable, as its README says) into a
throwaway child venv that sees this venv's packages through a ``.pth`` line,
so the shared ``.venv`` never holds a ``demo`` plugin that other test runs
would discover. Then it runs the package's own tests, discovers it through its
entry point and runs its example run file from TOML.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from hostkit.cli import main
from hostkit.errors import ConfigError
from hostkit.plugins import PluginHost
from hostkit.schema import markdown_table
from hostkit.scaffold import _load_class, names, option_blocks, readme_problems, render_options, scaffold


def test_names_follow_one_convention():
    assert names("magnitude-prune") == {
        "name": "magnitude_prune", "dist": "hostkit-magnitude-prune", "module": "hostkit_magnitude_prune",
        "pass_type": "MagnitudePrune", "pass_type_lower": "magnitudeprune", "config_class": "MagnitudePruneConfig",
    }
    assert names("hostkit-prune")["name"] == "prune"
    assert names("prune", "Prune2")["config_class"] == "Prune2Config"


@pytest.mark.parametrize("name, pass_type", [("Prune", None), ("2prune", None), ("my prune", None), ("prune", "My Prune")])
def test_bad_names_are_config_errors(name, pass_type):
    with pytest.raises(ConfigError, match="new-plugin"):
        names(name, pass_type)


def test_scaffold_renders_every_placeholder(tmp_path):
    root = scaffold("demo", tmp_path)
    assert root == tmp_path / "hostkit-demo"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [".gitignore", "README.md", "example.toml", "hostkit_demo/__init__.py", "hostkit_demo/config.py",
                     "hostkit_demo/plugin.py", "hostkit_demo/work.py", "pyproject.toml",
                     "tests/test_conformance.py", "tests/test_demo.py"]
    for path in root.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "{{" not in text and "__module__" not in text, path
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "hostkit-demo"' in pyproject
    assert '"hostkit-core>=0.1,<0.2"' in pyproject
    assert 'demo = "hostkit_demo.plugin"' in pyproject
    config_cls = _load_class(root / "hostkit_demo" / "config.py", "DemoConfig")
    assert option_blocks((root / "README.md").read_text()) == {"Demo": markdown_table(config_cls)}


def test_scaffold_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "hostkit-demo").mkdir()
    (tmp_path / "hostkit-demo" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        scaffold("demo", tmp_path)


def test_new_plugin_command(tmp_path, capsys):
    code = main(["new-plugin", "magnitude-prune", "--pass-type", "MagPrune", "--dest", str(tmp_path)],
                host=PluginHost.isolated())
    assert code == 0
    root = tmp_path / "hostkit-magnitude-prune"
    assert "class MagPruneConfig" in (root / "hostkit_magnitude_prune" / "config.py").read_text()
    assert f"created {root}" in capsys.readouterr().out
    assert main(["new-plugin", "Bad Name", "--dest", str(tmp_path)], host=PluginHost.isolated()) == 2


def test_render_options_rewrites_only_marked_tables():
    config_cls = _load_class(Path(__file__).parent / "_plugin" / "hostkit_echo" / "config.py", "EchoConfig")
    text = "intro\n<!-- options:Echo -->\nold table\n<!-- /options -->\n<!-- options:Other -->\nkeep\n<!-- /options -->\n"
    new = render_options(text, {"Echo": config_cls})
    assert option_blocks(new) == {"Echo": markdown_table(config_cls), "Other": "keep\n"}
    assert new.startswith("intro\n")


def test_readme_problems_name_the_fix(tmp_path):
    root = scaffold("demo", tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text().replace("| `scale` |", "| `scale_old` |"))
    problems = readme_problems(root)  # not installed: imported from the folder
    assert len(problems) == 1
    assert "the Demo option table differs from DemoConfig" in problems[0]
    assert "python -m hostkit.scaffold update-readme" in problems[0]
    from hostkit.scaffold import main as scaffold_main

    assert scaffold_main(["update-readme", "--check", str(root)]) == 1
    assert scaffold_main(["update-readme", str(root)]) == 0
    assert readme_problems(root) == []


# -- end to end ----------------------------------------------------------------


def _child_venv(path: Path) -> Path:
    """A venv whose python also sees this venv's site-packages (and their .pth files)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    child_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages())
    Path(child_site, "_hostkit_parent_venv.pth").write_text(lines)
    return python


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HOSTKIT_", "PYTEST_")) and k not in ("PYTHONPATH", "COV_CORE_SOURCE")}
    return env


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_scaffolded_plugin_installs_tests_and_runs(tmp_path, tiny_llama):
    code = main(["new-plugin", "demo", "--dest", str(tmp_path / "tmp")], host=PluginHost.isolated())
    assert code == 0
    package = tmp_path / "tmp" / "hostkit-demo"
    python = _child_venv(tmp_path / "venv")

    # the README's install command (editable, no downloads: everything is already in the venv)
    done = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                 "--no-build-isolation", "-e", str(package)], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    # its own tests: conformance suite and behaviour tests, from its own pyproject's pytest settings
    done = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package)], cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]

    # discovered through its entry point
    done = _run([str(python), "-m", "hostkit", "plugins", "--json"], cwd=tmp_path)
    record = {r["name"]: r for r in json.loads(done.stdout)}["demo"]
    assert (record["distribution"], record["status"], record["provides"]) == ("hostkit-demo", "loaded", ["Demo"])
    done = _run([str(python), "-m", "hostkit", "schema", "Demo"], cwd=tmp_path)
    assert done.returncode == 0 and "scale = 1.0" in done.stdout, done.stdout + done.stderr

    # its example run file, from TOML, on the tiny model where the file expects it
    shutil.copytree(tiny_llama, package / "models" / "tiny-llama")
    done = _run([str(python), "-m", "hostkit", "run", "example.toml"], cwd=package)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((package / "runs" / "demo" / "manifest.json").read_text())
    step = manifest["steps"][0]
    assert (manifest["status"], step["type"], step["plugin"]["distribution"]) == ("ok", "Demo", "hostkit-demo")
    model_dir = package / Path(step["output"]["path"])  # the manifest may hold paths relative to the run file
    assert model_dir == package / "runs" / "demo" / "01-demo" / "model" and (model_dir / "config.json").is_file()

    # and the shared venv never saw it
    assert "demo" not in PluginHost.discover(env={}).records
