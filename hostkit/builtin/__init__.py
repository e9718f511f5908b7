"""The host's own behaviour, registered as ordinary plugins (pluggy's eggsample style)."""

INTERNAL_PLUGINS = (
    ("hostkit.models", "hostkit.builtin.models"),
    ("hostkit.passes", "hostkit.builtin.passes"),
    ("hostkit.measure", "hostkit.builtin.measure"),
    ("hostkit.progress", "hostkit.builtin.progress"),
    ("hostkit.manifest", "hostkit.builtin.manifest"),
)
