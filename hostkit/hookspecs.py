"""Hook specifications of the hostkit plugin host.

Every hook name starts with ``hostkit_``. The host calls them only through
:class:`hostkit.plugins.HookCaller` (keyword arguments, one place), never
through ``pm.hook`` directly. Plugins implement them with
``@hostkit.hookimpl``.

There are three kinds of hooks:

* registration hooks receive a ``register`` callback (simonw/llm style), so a
  plugin declares what it provides in a few lines and the host owns the registry;
* ``hostkit_load_model`` (``firstresult``): the first plugin that claims the
  model returns a handle, the others return ``None``;
* ``hostkit_run_pass``: the host's own implementation calls the entry the
  pass type's :class:`~hostkit.PassSpec` names (``run=``), so only the plugin
  that registered a pass type runs it; plugins may wrap it (``wrapper=True``)
  to time, measure or capture a pass, never answer it;
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
    ``register.data_type(DataTypeSpec(...))`` for each ``[data.NAME]`` type,
    ``register.exporter(PassSpec(...))`` for each exporter (each names its
    ``run`` entry) and
    ``register.command(CommandSpec(...))`` for each CLI command. Must not import
    heavy libraries: it runs for ``hostkit --help``. Returns nothing.
    """


# -- work hooks ------------------------------------------------------------


@hookspec(firstresult=True)
def hostkit_load_model(model: Any, context: "RunContext") -> Any:
    """Turn the structured ``[model]`` handle into the handle the first pass gets.

    ``model`` is an instance of a registered model type (e.g. ``HfModel``)
    with paths already resolved against the run file's folder. Return the
    (possibly new) handle when this plugin handles ``type(model)``, else ``None``.
    """


@hookspec(firstresult=True)
def hostkit_run_pass(pass_type: str, config: Any, model: Any, context: "StepContext") -> Any:
    """One step of type ``pass_type`` (canonical spelling, a pass or an exporter) runs on ``model``.

    The host's built-in implementation calls ``context.step.spec.run(config,
    model, context)`` and returns its handle. A plugin implements this hook only
    as a wrapper (``@hookimpl(wrapper=True)``, ``result = yield``, then return
    it): for timing, memory, captured output around every pass. A plain
    implementation is refused when the plugin loads (register
    ``PassSpec(run=...)`` instead).
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
