"""``user_script`` files: run only because a run file names them.

A user script is ordinary Python that the run file points at (a model loader,
a training loop, a data loader). The host imports it from its path, once per
process, and looks up the named function; errors name the option.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

from hostkit.errors import PassError


def _module_name(path: Path) -> str:
    return "hostkit_user_script_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]


def load_script(path: str | Path, option: str = "user_script") -> Any:
    """Import ``path`` as a module, once per process (``sys.modules`` holds it, by its absolute path)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise PassError(f"{option}: {path} does not exist")
    name = _module_name(path)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PassError(f"{option}: {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise PassError(f"{option}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(str(path.parent))
    return sys.modules[name]


def load_object(path: str | Path, name: str, option: str, script_option: str = "user_script") -> Any:
    """The attribute ``name`` of the script at ``path``; a clear error naming ``option`` if absent."""
    module = load_script(path, script_option)
    if not hasattr(module, name):
        public = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise PassError(f"{option}: {Path(path).name} has no {name!r} (it defines: {', '.join(public) or 'nothing callable'})")
    return getattr(module, name)


def load_function(path: str | Path, name: str, option: str, script_option: str = "user_script") -> Callable[..., Any]:
    obj = load_object(path, name, option, script_option)
    if not callable(obj):
        raise PassError(f"{option}: {name!r} in {Path(path).name} is not callable")
    return obj
