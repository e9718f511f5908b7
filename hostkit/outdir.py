"""The output folder's own files: its lock and the previous run's manifest.

One run at a time writes an output folder. :func:`lock_output` takes an exclusive ``flock`` on
``<output>/.hostkit.lock`` and writes the holder (pid, host, start time, run file) into it; the
kernel drops the lock when the process ends however it ends, so a lock file whose lock is free
was left by a run that did not get to release it (kill -9, power loss): it is taken over with a
warning naming that run. A second run while the first holds the lock is refused (exit 2) with
one line naming the folder and the holder. Under ``torchrun`` only rank 0 takes it.

:func:`read_manifest` reads the previous ``manifest.json`` through its schema (a JSON object
whose ``steps`` is a list of objects with string ``key`` and ``status``); a file that does not
fit is moved aside to ``manifest.json.corrupt-<time>`` with one warning, and the run goes on
as if there were none.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from hostkit.errors import ConfigError

LOCK_FILE = ".hostkit.lock"
MANIFEST = "manifest.json"


class OutputLocked(ConfigError):
    """Another run holds the output folder (exit 2)."""


def _holder(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "a hostkit run"
    return (f"hostkit run pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            + (f", run file {holder['run_file']}" if holder.get("run_file") else ""))


@attrs.define
class OutputLock:
    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still holding it: nobody takes the old inode meanwhile
        except OSError:
            pass
        os.close(self.fd)  # drops the flock
        self.fd = None


def lock_output(out: Path, *, run_file: str | None = None, where: str = "output.dir", stream: Any = None) -> OutputLock:
    """Take ``out``'s lock or raise :class:`OutputLocked` naming the holder."""
    import fcntl

    stream = stream if stream is not None else sys.stderr
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise OutputLocked(f"{where}: {out} is in use by {describe_holder(holder)}; wait for it to end, "
                               "or write somewhere else (--output-dir)") from None
        try:  # the holder we waited on may have released and unlinked it: lock the file that is there now
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    if stale:
        print(f"warning: {out}: taking over the stale lock of {describe_holder(stale)}, which ended without "
              "releasing it", file=stream)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "run_file": run_file}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    return OutputLock(path=path, fd=fd)


def _steps_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    steps = data.get("steps", [])
    if not isinstance(steps, list):
        return f"steps: expected a list, got {type(steps).__name__}"
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            return f"steps[{i}]: expected an object, got {type(step).__name__}"
        for key in ("key", "status"):
            if not isinstance(step.get(key), str):
                return f"steps[{i}].{key}: expected a string, got {json.dumps(step.get(key))}"
        if step.get("output") is not None and not isinstance(step["output"], dict):
            return f"steps[{i}].output: expected an object"
        if not isinstance(step.get("files", {}), dict):
            return f"steps[{i}].files: expected an object"
    return None


def read_manifest(out: Path, *, move_aside: bool = True, stream: Any = None) -> dict[str, Any]:
    """The previous run's manifest, or ``{}`` when there is none or it does not fit the schema (moved aside)."""
    path = out / MANIFEST
    if not path.exists():
        return {}
    stream = stream if stream is not None else sys.stderr
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        problem = _steps_problem(data)
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except ValueError as exc:
        problem = f"invalid JSON: {exc}"
    except IsADirectoryError:
        problem = "a folder"
    except OSError as exc:
        print(f"warning: cannot read {path}: {exc.strerror or exc}; running every step", file=stream)
        return {}
    if problem is None:
        return data
    if not move_aside:
        return {}
    aside = path.with_name(f"{MANIFEST}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{MANIFEST}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{n}")
        n += 1
    path.rename(aside)
    print(f"warning: {path} is not a hostkit manifest ({problem}); moved it aside to {aside.name} and running "
          "every step as if there were none", file=stream)
    return {}
