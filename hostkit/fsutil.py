"""Files: atomic writes, content hashes and cheap fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".hostkit"))


def content_hash(path: Path) -> str | None:
    """sha256 over the relative names and bytes of every file under ``path``."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for file in _files(path):
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def file_digests(path: Path) -> tuple[str, dict[str, list]]:
    """``(content_hash(path), {relative name: [size, "sha256:..."]})`` of the folder ``path``, in one read
    of every byte (a step folder can hold a 14 GB model)."""
    path = Path(path)
    whole = hashlib.sha256()
    out = {}
    for file in _files(path):
        name = str(file.relative_to(path))
        whole.update(name.encode())
        digest = hashlib.sha256()
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                whole.update(chunk)
                digest.update(chunk)
        out[name] = [file.stat().st_size, "sha256:" + digest.hexdigest()]
    return "sha256:" + whole.hexdigest(), out


def changed_files(path: Path, recorded: dict[str, Any], *, verify: bool = False) -> list[tuple[str, str]]:
    """(name, "missing" / "changed") for the recorded files of folder ``path`` that are gone or differ:
    by size (cheap), and with ``verify`` by sha256 too."""
    path = Path(path)
    found = []
    for name, entry in sorted(recorded.items()):
        file = path / name
        try:
            size = file.stat().st_size
        except OSError:
            found.append((name, "missing"))
            continue
        if not isinstance(entry, list) or len(entry) != 2:
            continue
        if size != entry[0]:
            found.append((name, f"changed ({entry[0]} -> {size} bytes)"))
        elif verify:
            digest = hashlib.sha256()
            with open(file, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            if "sha256:" + digest.hexdigest() != entry[1]:
                found.append((name, "changed (content hash)"))
    return found


def fingerprint(path: Path) -> str | None:
    """A cheap stand-in for a content hash: names, sizes and mtimes of the files."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for file in _files(path):
        st = file.stat()
        digest.update(f"{file}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "stat:" + digest.hexdigest()[:32]


def stable_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (since the last reset)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # noqa: BLE001
        return None
