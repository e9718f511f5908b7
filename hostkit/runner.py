"""The runner: load the model, run the steps in order, keep outputs whole.

Each step writes into ``<output>/.NN-name.partial/`` and the folder is renamed
to ``NN-name/`` only when the step completes, so a step folder exists only when
it is complete. ``manifest.json`` is replaced atomically after every step.
A step whose cache key (pass type, resolved options, plugin version, input
handle and a fingerprint of the input files) matches the previous manifest is
skipped. A ``.partial`` folder left by an interrupted step with the same key is
kept, so a training pass can resume from its last checkpoint.

Under ``torchrun`` every rank runs every pass; only rank 0 renames folders and
writes the manifest.
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
from hostkit.config import RunConfig, StepConfig
from hostkit.options import is_data_field
from hostkit.errors import HostkitError, PassError
from hostkit.fsutil import atomic_write_json, content_hash, fingerprint, stable_hash
from hostkit.hardware import distributed_rank
from hostkit.plugins import PluginHost

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
    _failed_record: Any = None
    _progress_state: Any = None
    _scratch: list = attrs.field(factory=list)

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
    """A step failed; the message names the step, its TOML path and the plugin."""

    def __init__(self, message: str, *, cause: BaseException, is_bug: bool):
        super().__init__(message)
        self.cause = cause
        self.is_bug = is_bug


def _handle_json(handle: Any) -> dict[str, Any]:
    return handles.to_json(handle)


def _input_fingerprint(handle: Any) -> dict[str, Any]:
    return {name: fingerprint(Path(p)) or p for name, p in handles.path_fields(handle).items()}


def _previous_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Runner:
    """Runs a planned :class:`RunConfig` with a :class:`PluginHost`."""

    def __init__(self, host: PluginHost, config: RunConfig, *, stream: Any = None, use_cache: bool | None = None):
        self.host = host
        self.config = config
        self.stream = stream if stream is not None else sys.stderr
        self.use_cache = config.output.cache if use_cache is None else use_cache

    def run(self) -> list[StepRecord]:
        out = Path(self.config.output.dir)
        rank, world = distributed_rank()
        context = RunContext(config=self.config, host=self.host, output_dir=out, rank=rank,
                             world_size=world, stream=self.stream)
        manifest_path = out / "manifest.json"
        previous = _previous_manifest(manifest_path) if self.use_cache else {}
        previous_steps = {s.get("key"): s for s in previous.get("steps", []) if s.get("status") in ("ok", "cached")}
        if context.is_main_process:
            try:
                out.mkdir(parents=True, exist_ok=True)
                probe = out / ".hostkit-write-test"
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                raise PassError(f"output.dir: cannot write to {out}: {exc.strerror or exc}") from None
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
        records: list[StepRecord] = []
        self.host.hooks.run_started(context=context, steps=list(self.config.steps))
        error: BaseException | None = None
        try:
            model = self.host.hooks.load_model(model=self.config.model, context=context)
            if model is None:
                raise PassError(f"model: no plugin loads model type {type(self.config.model).__name__}")
            outputs = {"model": model}
            for step in self.config.steps:
                if step.input is not None:
                    model = outputs[step.input]
                record, model, step_context = self._run_step(context, step, model, previous_steps)
                if step.name:
                    outputs[step.name] = model
                records.append(record)
                context.manifest["steps"] = [r.as_json() for r in records]
                self.host.hooks.step_finished(context=step_context, record=record)
        except BaseException as exc:  # noqa: BLE001 - reported, then re-raised
            error = exc
            raise
        finally:
            for scratch in context._scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            failed = context._failed_record
            if failed is not None:
                records.append(failed)
            context.manifest["steps"] = [r.as_json() for r in records]
            context.manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            context.manifest["status"] = (
                "ok" if error is None else "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            )
            if records and "final_model" not in context.manifest and error is None:
                context.manifest["final_model"] = records[-1].output
            if self.host.hooks.observer_errors:
                context.manifest["observer_errors"] = list(self.host.hooks.observer_errors)
            self.host.hooks.run_finished(context=context, records=records, error=error)
        return records

    def _step_key(self, step: StepConfig, model: Any) -> str:
        """What a step's output depends on: a change to any of it re-runs the step."""
        plugin = step.spec.plugin
        return stable_hash({
            "type": step.type,
            "options": step.options,
            "folder": step.folder_name,
            "plugin": [plugin.distribution, plugin.version] if plugin else None,
            "input": _handle_json(model),
            "input_files": _input_fingerprint(model),
            "option_files": _input_fingerprint(step.config),
            "data": self._data_fingerprints(step),
        })

    def _data_fingerprints(self, step: StepConfig) -> dict[str, Any]:
        """The data tables the step names (``option(data=True)`` fields), with their files' fingerprints."""
        from hostkit.config import converter

        out = {}
        for field in attrs.fields(type(step.config)):
            name = getattr(step.config, field.name)
            if is_data_field(field) and isinstance(name, str) and name in self.config.data:
                data = self.config.data[name]
                out[name] = {"config": converter.unstructure(data), "files": _input_fingerprint(data)}
        return out

    def _run_step(self, run: RunContext, step: StepConfig, model: Any,
                  previous_steps: dict[str, Any]) -> tuple[StepRecord, Any, StepContext]:
        out = run.output_dir
        final = out / step.folder_name
        partial = out / f".{step.folder_name}.partial"
        key = self._step_key(step, model)
        plugin = step.spec.plugin
        record = StepRecord(
            index=step.index, type=step.type, folder=step.folder_name, key=key, name=step.name,
            plugin={"name": plugin.name, "distribution": plugin.distribution, "version": plugin.version} if plugin else {},
            options=step.options, input=_handle_json(model),
        )
        context = StepContext(run=run, step=step, record=record, output_dir=partial, total=len(self.config.steps))

        cached = previous_steps.get(key)
        if cached is not None and final.is_dir() and cached.get("output"):
            try:
                output = handles.from_json(cached["output"], self.host.registry.handle_types())
            except Exception:  # noqa: BLE001 - an unreadable entry just disables the cache
                output = None
            if output is not None and all(Path(p).exists() for p in handles.path_fields(output).values()
                                          if p.startswith("/")):
                record.status = "cached"
                record.output = cached["output"]
                record.content_hash = cached.get("content_hash")
                record.metrics = cached.get("metrics", {})
                record.notes = cached.get("notes", {})
                record.duration_s = 0.0
                context.output_dir = final
                return record, output, context

        if run.is_main_process:
            state = partial / STEP_STATE
            if partial.exists():
                try:
                    same = json.loads(state.read_text()).get("key") == key
                except (OSError, ValueError):
                    same = False
                if same:
                    context.resuming = True
                else:
                    shutil.rmtree(partial)
            partial.mkdir(parents=True, exist_ok=True)
            atomic_write_json(state, {"key": key, "type": step.type, "resuming": context.resuming})
        run.barrier()
        if not run.is_main_process:
            # rank 0 decides whether the step resumes; torch.distributed may start only inside
            # the first training pass, so the barrier above can be a no-op: wait for its word
            decision = _wait_for_rank0(partial / STEP_STATE, key, final)
            if decision is None:
                # no process group keeps the ranks together and rank 0 has already finished
                # this step: run it in a scratch folder rather than re-creating the .partial one
                scratch = Path(tempfile.mkdtemp(prefix=f"hostkit-rank{run.rank}-"))
                run._scratch.append(scratch)
                context.output_dir = partial = scratch
            else:
                context.resuming = decision
                partial.mkdir(parents=True, exist_ok=True)

        self.host.hooks.step_started(context=context)
        try:  # duration, peak memory and captured library output: hostkit.builtin.measure
            output = self.host.hooks.run_pass(pass_type=step.type, config=step.config, model=model, context=context)
        except BaseException as exc:
            record.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            run._failed_record = record
            self.host.hooks.step_failed(context=context, error=exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            where = f"{step.toml_path} (plugin {plugin.describe() if plugin else '?'})"
            if isinstance(exc, HostkitError):
                raise StepFailed(f"{where}: {exc}", cause=exc, is_bug=False) from exc
            if isinstance(exc, OSError) and exc.errno is not None:
                raise StepFailed(f"{where}: {exc.strerror}: {exc.filename or ''}".rstrip(": "), cause=exc, is_bug=False) from exc
            raise StepFailed(f"{where}: bug in the plugin: {type(exc).__name__}: {exc}", cause=exc, is_bug=True) from exc

        run.barrier()
        if run.is_main_process:
            (partial / STEP_STATE).unlink(missing_ok=True)
            old = out / f".{step.folder_name}.old"
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
            partial.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        run.barrier()
        output = handles.relocate(output, str(partial), str(final))
        context.output_dir = final
        record.status = "ok"
        record.resumed = context.resuming
        record.output = _handle_json(output)
        if run.is_main_process:
            record.content_hash = content_hash(final)
        return record, output, context


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
