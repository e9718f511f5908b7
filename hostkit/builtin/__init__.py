"""The host's own behaviour, registered as ordinary plugins (pluggy's eggsample style).

Each entry is (plugin name, ``module`` or ``module:Class``); a class is
instantiated once per host, so its state lives in the object, not in the run.
"""

INTERNAL_PLUGINS = (
    ("hostkit.models", "hostkit.builtin.models"),
    ("hostkit.passes", "hostkit.builtin.passes"),
    ("hostkit.measure", "hostkit.builtin.measure"),
    ("hostkit.progress", "hostkit.builtin.progress:ProgressDisplay"),  # an object: it holds its own state
    ("hostkit.manifest", "hostkit.builtin.manifest"),
)
