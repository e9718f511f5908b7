"""The runner: load the model, run the steps in order, keep outputs whole.

Each step writes into ``<output>/.NN-name.partial/`` and the folder is renamed
to ``NN-name/`` only when the step completes, so a step folder exists only when
it is complete. ``manifest.json`` is replaced atomically after every step.
A step whose cache key (pass type, resolved options, plugin version, for a
plugin installed from a local folder its source files' fingerprint
(:mod:`hostkit.devcode`), input handle and a fingerprint of the input files) matches the previous manifest is
skipped, when the files the manifest recorded for it are still there with their
sizes (``verify``: their sha256 too); otherwise it runs again, saying why. A
``.partial`` folder left by an interrupted step with the same key is kept, so a
training pass can resume from its last checkpoint.

A run holds an exclusive lock on its output folder (:mod:`hostkit.outdir`), and
reads the previous manifest through its schema (one that does not fit is moved
aside). When writing the manifest fails after a step failed, the step's error is
the one reported.

Under ``torchrun`` every rank runs every pass; only rank 0 takes the lock,
renames folders and writes the manifest.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import attrs

from hostkit import __version__, handles
from hostkit.converter import converter
from hostkit.devcode import source_fingerprint
from hostkit.errors import HostkitError, PassError
from hostkit.fsutil import atomic_write_json, changed_files, file_digests, fingerprint, stable_hash
from hostkit.hardware import distributed_rank
from hostkit.options import is_data_field
from hostkit.outdir import OutputLock, lock_output, read_manifest
from hostkit.plugins import PluginHost
from hostkit.tables import RunConfig, StepConfig

STEP_STATE = ".hostkit-step.json"


@attrs.define
class StepRecord:
    """What the manifest says about one step."""

    index: int
    type: str
    folder: str
    key: str
    name: str | None = None
    status: str = "pending"  # ok | cached | failed | interrupted
    plugin: dict[str, Any] = attrs.field(factory=dict)
    options: dict[str, Any] = attrs.field(factory=dict)
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    content_hash: str | None = None
    duration_s: float | None = None
    peak_rss_mb: float | None = None
    metrics: dict[str, Any] = attrs.field(factory=dict)
    notes: dict[str, Any] = attrs.field(factory=dict)
    resumed: bool = False
    error: str | None = None
    files: dict[str, Any] = attrs.field(factory=dict)  # relative path -> [size, "sha256:..."] of the step folder
    plugin_code: str | None = None  # a plugin installed from a local folder: its sources' fingerprint (in the key)

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class RunContext:
    """What the whole run shares; passed to ``hostkit_load_model`` and observers."""

    config: RunConfig
    host: PluginHost
    output_dir: Path
    rank: int = 0
    world_size: int = 1
    manifest: dict[str, Any] = attrs.field(factory=dict)
    stream: Any = None

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def base_dir(self) -> Path:
        return self.config.base_dir

    def data_config(self, name: str) -> Any:
        """The ``[data.NAME]`` table, an instance of its data type's class (a :class:`hostkit.data.DataTable`)."""
        return self.config.data[name]

    def barrier(self) -> None:
        """Wait for every rank when torch.distributed is running (no-op otherwise)."""
        if self.world_size > 1 and "torch" in sys.modules:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()


@attrs.define
class StepContext:
    """What a pass gets besides its config and input handle.

    Write files only under ``output_dir``; report metrics with
    :meth:`report_metric`, progress with :meth:`progress`, and facts worth
    keeping in the manifest (e.g. ``dequantized=True``) with :meth:`note`.
    """

    run: RunContext
    step: StepConfig
    record: StepRecord
    output_dir: Path
    total: int
    resuming: bool = False

    @property
    def index(self) -> int:
        return self.step.index

    @property
    def pass_type(self) -> str:
        return self.step.type

    @property
    def toml_path(self) -> str:
        return self.step.toml_path

    @property
    def is_main_process(self) -> bool:
        return self.run.is_main_process

    def data_config(self, name: str) -> Any:
        return self.run.data_config(name)

    def report_metric(self, name: str, value: Any, step: int | None = None) -> None:
        """A scalar (``step=None``) or one point of a curve (e.g. loss at a training step)."""
        if step is None:
            self.record.metrics[name] = value
        else:
            self.record.metrics.setdefault(name, []).append([step, value])
        self.run.host.hooks.metric(context=self, name=name, value=value, step=step)

    def progress(self, message: str, current: int | None = None, total: int | None = None) -> None:
        self.run.host.hooks.progress(context=self, message=message, current=current, total=total)

    def note(self, **facts: Any) -> None:
        self.record.notes.update(facts)


class StepFailed(HostkitError):
    """A step failed; the message names the step, its TOML path and the plugin; ``record`` is its manifest entry."""

    def __init__(self, message: str, *, cause: BaseException, is_bug: bool, record: StepRecord | None = None):
        super().__init__(message)
        self.cause = cause
        self.is_bug = is_bug
        self.record = record


def _handle_json(handle: Any) -> dict[str, Any]:
    return handles.to_json(handle)


def _input_fingerprint(handle: Any) -> dict[str, Any]:
    return {name: fingerprint(Path(p)) or p for name, p in handles.path_fields(handle).items()}


class Runner:
    """Runs a planned :class:`RunConfig` with a :class:`PluginHost`."""

    def __init__(self, host: PluginHost, config: RunConfig, *, stream: Any = None, use_cache: bool | None = None,
                 verify: bool = False):
        self.host = host
        self.verify = verify  # check the hashes (not only the sizes) of a cached step's files
        self._lock: OutputLock | None = None
        self.config = config
        self.stream = stream if stream is not None else sys.stderr
        self.use_cache = config.output.cache if use_cache is None else use_cache
        self._scratch: list[Path] = []  # rank > 0 folders of steps rank 0 had already finished
        self._code: dict[str, str | None] = {}  # distribution -> its source fingerprint (locally installed ones)

    def run(self) -> list[StepRecord]:
        context = self._start()
        records: list[StepRecord] = []
        error: BaseException | None = None
        try:
            previous = _reusable_steps(read_manifest(context.output_dir, move_aside=context.is_main_process,
                                                     stream=self.stream)) if self.use_cache else {}
            self.host.hooks.run_started(context=context, steps=list(self.config.steps))
        except BaseException:
            self._release()  # no step ran: nothing for _finish to record, but the folder is free again
            raise
        try:
            model = self.host.hooks.load_model(model=self.config.model, context=context)
            if model is None:
                raise PassError(f"model: no plugin loads model type {type(self.config.model).__name__}")
            outputs = {"model": model}
            for step in self.config.steps:
                model = outputs[step.input] if step.input is not None else model
                record = self._new_record(step, model)
                records.append(record)
                model, step_context = self._run_step(context, step, model, record, previous)
                if step.name:
                    outputs[step.name] = model
                context.manifest["steps"] = [r.as_json() for r in records]
                self.host.hooks.step_finished(context=step_context, record=record)
        except BaseException as exc:  # noqa: BLE001 - reported, then re-raised
            error = exc
            if isinstance(exc, KeyboardInterrupt) and records and records[-1].status == "pending":
                records[-1].status = "interrupted"  # stopped while it was starting: still a step of this run
            raise
        finally:
            self._finish(context, records, error)
        return records

    # -- the run --------------------------------------------------------------

    def _start(self) -> RunContext:
        out = Path(self.config.output.dir)
        rank, world = distributed_rank()
        context = RunContext(config=self.config, host=self.host, output_dir=out, rank=rank,
                             world_size=world, stream=self.stream)
        if context.is_main_process:
            _check_writable(out)
            self._lock = lock_output(out, run_file=str(self.config.source), stream=self.stream)
        context.manifest = {
            "hostkit_version": __version__,
            "run_file": str(self.config.source),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": "running",
            "config": self.config.raw,
            "plugins": {r.name: {"distribution": r.distribution, "version": r.version, "status": r.status}
                        for r in self.host.records.values()},
            "steps": [],
        }
        return context

    def _finish(self, context: RunContext, records: list[StepRecord], error: BaseException | None) -> None:
        for scratch in self._scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        records[:] = [r for r in records if r.status != "pending"]  # a step that never started
        manifest = context.manifest
        manifest["steps"] = [r.as_json() for r in records]
        manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["status"] = ("ok" if error is None else
                              "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
        if records and "final_model" not in manifest and error is None:
            manifest["final_model"] = records[-1].output
        if self.host.hooks.observer_errors:
            manifest["observer_errors"] = list(self.host.hooks.observer_errors)
        try:
            self.host.hooks.run_finished(context=context, records=records, error=error)
        except OSError as exc:
            if error is None:
                raise
            # the run already failed: that error is the one to report; say what else went wrong
            print(f"warning: could not write {context.output_dir / 'manifest.json'}: {exc.strerror or exc}",
                  file=self.stream)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- one step ---------------------------------------------------------------

    def _new_record(self, step: StepConfig, model: Any) -> StepRecord:
        plugin = step.spec.plugin
        return StepRecord(
            index=step.index, type=step.type, folder=step.folder_name, key=self._step_key(step, model), name=step.name,
            plugin={"name": plugin.name, "distribution": plugin.distribution, "version": plugin.version} if plugin else {},
            options=step.options, input=_handle_json(model), plugin_code=self._plugin_code(plugin),
        )

    def _plugin_code(self, plugin: Any) -> str | None:
        if plugin is None or not plugin.distribution:
            return None
        if plugin.distribution not in self._code:
            self._code[plugin.distribution] = source_fingerprint(plugin.distribution)
        return self._code[plugin.distribution]

    def _run_step(self, run: RunContext, step: StepConfig, model: Any, record: StepRecord,
                  previous: dict[str, Any]) -> tuple[Any, StepContext]:
        """Serve the step from the cache, or run it in its .partial folder and publish it."""
        final = run.output_dir / step.folder_name
        context = StepContext(run=run, step=step, record=record, output_dir=final, total=len(self.config.steps))
        cached = self._cached(previous.get(record.key), final, step)
        if cached is not None:
            _mark_cached(record, previous[record.key])
            return cached, context
        self._say_if_code_changed(step, record, previous)
        context.output_dir, context.resuming = self._prepare_dir(run, step, record.key)
        output = self._call(context, model)
        output = self._publish(run, step, context, output)
        return output, context

    def _cached(self, entry: dict[str, Any] | None, final: Path, step: StepConfig) -> Any:
        """The output handle of a previous run of this step, when its folder and files are all still there
        (recorded sizes; with ``verify`` their hashes); else None, saying why when files changed."""
        if entry is None or not final.is_dir() or not entry.get("output"):
            return None
        try:
            output = handles.from_json(entry["output"], self.host.registry.handle_types())
        except Exception:  # noqa: BLE001 - an unreadable entry just disables the cache
            return None
        paths = [p for p in handles.path_fields(output).values() if p.startswith("/")]
        if not all(Path(p).exists() for p in paths):
            return None
        changed = changed_files(final, entry.get("files") or {}, verify=self.verify)
        if changed:
            shown = ", ".join(f"{step.folder_name}/{name} {why}" for name, why in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            print(f"[{step.index + 1}/{len(self.config.steps)}] {step.type}: {shown}{more} since the last run: "
                  "running it again", file=self.stream)
            return None
        return output

    def _say_if_code_changed(self, step: StepConfig, record: StepRecord, previous: dict[str, Any]) -> None:
        """A step re-run because its locally installed plugin's sources changed says so."""
        before = next((e for e in previous.values() if e.get("folder") == step.folder_name), None)
        old, new = (before or {}).get("plugin_code"), record.plugin_code
        if old and new and old != new:
            print(f"[{step.index + 1}/{len(self.config.steps)}] {step.type}: the code of "
                  f"{record.plugin.get('distribution')} (installed from a local folder) changed since the last run: "
                  "running it again", file=self.stream)

    def _prepare_dir(self, run: RunContext, step: StepConfig, key: str) -> tuple[Path, bool]:
        """The folder the step writes into, and whether it resumes an interrupted run of itself."""
        partial = run.output_dir / f".{step.folder_name}.partial"
        resuming = False
        if run.is_main_process:
            resuming = _resumable(partial, key)
            if partial.exists() and not resuming:
                shutil.rmtree(partial)
            partial.mkdir(parents=True, exist_ok=True)
            atomic_write_json(partial / STEP_STATE, {"key": key, "type": step.type, "resuming": resuming})
        run.barrier()
        if run.is_main_process:
            return partial, resuming
        # rank 0 decides whether the step resumes; torch.distributed may start only inside
        # the first training pass, so the barrier above can be a no-op: wait for its word
        decision = _wait_for_rank0(partial / STEP_STATE, key, run.output_dir / step.folder_name)
        if decision is None:
            # no process group keeps the ranks together and rank 0 has already finished
            # this step: run it in a scratch folder rather than re-creating the .partial one
            scratch = Path(tempfile.mkdtemp(prefix=f"hostkit-rank{run.rank}-"))
            self._scratch.append(scratch)
            return scratch, False
        partial.mkdir(parents=True, exist_ok=True)
        return partial, decision

    def _call(self, context: StepContext, model: Any) -> Any:
        """Run the pass (through ``hostkit_run_pass``: duration, memory and captured output are
        :mod:`hostkit.builtin.measure`'s); a failure marks the record and becomes a :class:`StepFailed`."""
        self.host.hooks.step_started(context=context)
        step, record = context.step, context.record
        try:
            return self.host.hooks.run_pass(pass_type=step.type, config=step.config, model=model, context=context)
        except BaseException as exc:
            record.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            self.host.hooks.step_failed(context=context, error=exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise _classify(exc, step, record, context.output_dir) from exc

    def _publish(self, run: RunContext, step: StepConfig, context: StepContext, output: Any) -> Any:
        """Rename the .partial folder to the step folder (rank 0) and point the handle at it."""
        partial, final = context.output_dir, run.output_dir / step.folder_name
        run.barrier()
        if run.is_main_process:
            (partial / STEP_STATE).unlink(missing_ok=True)
            _replace_dir(partial, final)
        run.barrier()
        output = handles.relocate(output, str(partial), str(final))
        context.output_dir = final
        record = context.record
        record.status = "ok"
        record.resumed = context.resuming
        record.output = _handle_json(output)
        if run.is_main_process:
            record.content_hash, record.files = file_digests(final)
        return output

    # -- cache keys -------------------------------------------------------------

    def _step_key(self, step: StepConfig, model: Any) -> str:
        """What a step's output depends on: a change to any of it re-runs the step."""
        plugin = step.spec.plugin
        return stable_hash({
            "type": step.type,
            "options": step.options,
            "folder": step.folder_name,
            "plugin": [plugin.distribution, plugin.version] if plugin else None,
            "plugin_code": self._plugin_code(plugin),
            "input": _handle_json(model),
            "input_files": _input_fingerprint(model),
            "option_files": _input_fingerprint(step.config),
            "data": self._data_fingerprints(step),
        })

    def _data_fingerprints(self, step: StepConfig) -> dict[str, Any]:
        """The data tables the step names (``option(data=True)`` fields), with their files' fingerprints."""
        out = {}
        for field in attrs.fields(type(step.config)):
            name = getattr(step.config, field.name)
            if is_data_field(field) and isinstance(name, str) and name in self.config.data:
                data = self.config.data[name]
                out[name] = {"config": converter.unstructure(data), "files": _input_fingerprint(data)}
        return out


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".hostkit-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PassError(f"output.dir: cannot write to {out}: {exc.strerror or exc}") from None


def _reusable_steps(previous: dict[str, Any]) -> dict[str, Any]:
    """Cache key -> step entry, for the completed steps of the previous manifest (read by :func:`read_manifest`)."""
    return {s["key"]: s for s in previous.get("steps", []) if s["status"] in ("ok", "cached")}


def _mark_cached(record: StepRecord, entry: dict[str, Any]) -> None:
    record.status = "cached"
    record.output = entry["output"]
    record.content_hash = entry.get("content_hash")
    record.metrics = entry.get("metrics", {})
    record.notes = entry.get("notes", {})
    record.files = entry.get("files", {})
    record.duration_s = 0.0


def _resumable(partial: Path, key: str) -> bool:
    """Whether ``partial`` was left by an interrupted run of the step with this same key."""
    try:
        return json.loads((partial / STEP_STATE).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def _replace_dir(partial: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _classify(exc: BaseException, step: StepConfig, record: StepRecord, output_dir: Path) -> "StepFailed":
    """An expected failure (HostkitError, an OSError with an errno: the machine's) or a bug in the plugin."""
    plugin = step.spec.plugin
    where = f"{step.toml_path} (plugin {plugin.describe() if plugin else '?'})"
    if isinstance(exc, HostkitError):
        return StepFailed(f"{where}: {exc}", cause=exc, is_bug=False, record=record)
    if isinstance(exc, OSError) and exc.errno is not None:
        # a write() that fails has no file name: name the folder the step was writing
        path = exc.filename if exc.filename is not None else f"while writing into {output_dir}"
        return StepFailed(f"{where}: {exc.strerror}: {path}", cause=exc, is_bug=False, record=record)
    return StepFailed(f"{where}: bug in the plugin: {type(exc).__name__}: {exc}", cause=exc, is_bug=True, record=record)


def _wait_for_rank0(state: Path, key: str, final: Path, timeout_s: float = 600.0) -> bool | None:
    """On a rank > 0: wait until rank 0 has prepared the step, and return its resume decision
    (``None``: rank 0 has already completed the step)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = json.loads(state.read_text())
            if data.get("key") == key:
                return bool(data.get("resuming"))
        except (OSError, ValueError):
            pass
        if final.is_dir() and not state.parent.exists():
            return None
        time.sleep(0.05)
    raise PassError(f"rank 0 did not prepare {state.parent.name} within {timeout_s:.0f}s")


def format_bug(exc: BaseException, limit: int = 6) -> str:
    """A short traceback: the last ``limit`` frames."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-limit))
