"""The one implementation of ``hostkit_run_pass``: call the entry the step's PassSpec names.

A pass type is run by exactly the plugin that registered it; other plugins can
only wrap the call (``wrapper=True``), which is how the host itself measures
and captures every pass (:mod:`hostkit.builtin.measure`).
"""

from __future__ import annotations

from typing import Any

from hostkit.errors import PassError
from hostkit.plugins import hookimpl


@hookimpl
def hostkit_run_pass(pass_type: str, config: Any, model: Any, context: Any) -> Any:
    spec = context.step.spec
    output = spec.entry()(config, model, context)
    if output is None:
        plugin = spec.plugin.describe() if spec.plugin else "its plugin"
        raise PassError(f"the run entry of {plugin} ({spec.run if isinstance(spec.run, str) else spec.run.__qualname__}) "
                        "returned no handle")
    return output
