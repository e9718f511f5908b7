"""The source fingerprint of a plugin installed from a local folder, for the step cache.

A step's cache key holds its plugin's distribution and version. While a plugin
is developed its version stays put and its code changes, so for a distribution
that pip installed from a local folder (``direct_url.json`` has a ``file://``
url: ``pip install -e .``, editable, or ``pip install ./folder``) the key also
holds a fingerprint of its packages' ``.py`` files: their paths, sizes and
modification times (stat only, nothing is read). Editing ``work.py`` then
re-runs the step. A plugin installed from an index or a wheel has no such
file and is keyed by its version alone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib import metadata
from pathlib import Path
from typing import Any


def local_install(distribution: str) -> dict[str, Any] | None:
    """pip's ``direct_url.json`` of ``distribution`` when it points at a local folder, else None."""
    try:
        text = metadata.distribution(distribution).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) and str(info.get("url", "")).startswith("file://") else None


def _packages(distribution: str) -> list[str]:
    """The top-level import packages of ``distribution``: ``top_level.txt``, and its entry points' modules."""
    dist = metadata.distribution(distribution)
    names = set((dist.read_text("top_level.txt") or "").split())
    names |= {ep.value.split(":")[0].split(".")[0] for ep in dist.entry_points}
    return sorted(n for n in names if n.isidentifier())


def _source_files(package: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return sorted(p for folder in spec.submodule_search_locations for p in Path(folder).rglob("*.py")
                      if "__pycache__" not in p.parts)
    return [Path(spec.origin)] if spec.origin and spec.origin.endswith(".py") else []


def source_fingerprint(distribution: str | None) -> str | None:
    """``"sha256:..."`` of (path, size, mtime) of every ``.py`` file of a locally installed ``distribution``;
    None for a distribution installed from an index or a wheel (or unknown)."""
    if not distribution or local_install(distribution) is None:
        return None
    digest = hashlib.sha256()
    for package in _packages(distribution):
        for path in _source_files(package):
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "sha256:" + digest.hexdigest()
