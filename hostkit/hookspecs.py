"""Hook specifications of the hostkit plugin host.

Every hook name starts with ``hostkit_``. The host calls them only through
:class:`hostkit.plugins.HookCaller` (keyword arguments, one place), never
through ``pm.hook`` directly. Plugins implement them with
``@hostkit.hookimpl``.

There are three kinds of hooks:

* registration hooks receive a ``register`` callback (simonw/llm style), so a
  plugin declares what it provides in a few lines and the host owns the registry;
* work hooks (``firstresult``): the first plugin that claims the work returns a
  result, the others return ``None``;
* observer hooks: every implementation is called; progress display, the
  manifest writer and timing are themselves plugins of these hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from hostkit.registry import Registrar
    from hostkit.runner import RunContext, StepContext, StepRecord

hookspec = pluggy.HookspecMarker("hostkit")


# -- registration -----------------------------------------------------------


@hookspec
def hostkit_register(register: "Registrar") -> None:
    """Declare what this plugin provides.

    Call ``register.pass_type(PassSpec(...))`` for each pass type,
    ``register.model_type(ModelTypeSpec(...))`` for each model handle type,
    ``register.exporter(PassSpec(...))`` for each exporter and
    ``register.command(CommandSpec(...))`` for each CLI command. Must not import
    heavy libraries: it runs for ``hostkit --help``. Returns nothing.
    """


# -- work hooks (firstresult) ---------------------------------------------


@hookspec(firstresult=True)
def hostkit_load_model(model: Any, context: "RunContext") -> Any:
    """Turn the structured ``[model]`` handle into the handle the first pass gets.

    ``model`` is an instance of a registered model type (e.g. ``HfModel``)
    with paths already resolved against the run file's folder. Return the
    (possibly new) handle when this plugin handles ``type(model)``, else ``None``.
    """


@hookspec(firstresult=True)
def hostkit_run_pass(pass_type: str, config: Any, model: Any, context: "StepContext") -> Any:
    """Run one pass of type ``pass_type`` (canonical spelling) on ``model``.

    ``config`` is the pass's frozen attrs config; write files only under
    ``context.output_dir``. Return the output handle when this plugin provides
    ``pass_type``, else ``None``. Raise :class:`hostkit.PassError` for an
    expected failure.
    """


@hookspec(firstresult=True)
def hostkit_export_model(exporter: str, config: Any, model: Any, context: "StepContext") -> Any:
    """Write ``model`` into another format (e.g. ONNX) with exporter ``exporter``.

    Same contract as :func:`hostkit_run_pass`: return the new handle, or
    ``None`` when ``exporter`` is not this plugin's.
    """


# -- observers ----------------------------------------------------------------


@hookspec
def hostkit_run_started(context: "RunContext", steps: list) -> None:
    """A run begins; ``steps`` lists the planned steps. Returns nothing."""


@hookspec
def hostkit_step_started(context: "StepContext") -> None:
    """A step is about to run (not called for a step served from the cache)."""


@hookspec
def hostkit_step_finished(context: "StepContext", record: "StepRecord") -> None:
    """A step completed, or was skipped because its inputs and config are unchanged
    (``record.status == "cached"``). ``record`` holds handles, timings and metrics."""


@hookspec
def hostkit_step_failed(context: "StepContext", error: BaseException) -> None:
    """A step raised; the run stops after the observers have been told."""


@hookspec
def hostkit_metric(context: "StepContext", name: str, value: Any, step: int | None) -> None:
    """A pass reported a metric (e.g. ``train_loss`` at a training ``step``)."""


@hookspec
def hostkit_progress(context: "StepContext", message: str, current: int | None, total: int | None) -> None:
    """A pass reported progress on long work (a training step, a layer)."""


@hookspec
def hostkit_run_finished(context: "RunContext", records: list, error: BaseException | None) -> None:
    """A run ended, successfully (``error is None``) or not."""
