"""Exceptions the host turns into one clear line and an exit code.

Expected failures derive from :class:`HostkitError`; anything else escaping a
plugin is treated as a bug in that plugin and printed with a short traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PASS_FAILED = 1
EXIT_CONFIG = 2
EXIT_PLUGIN = 3


class HostkitError(Exception):
    """Base of the expected failures; ``exit_code`` says how the CLI exits."""

    exit_code = EXIT_PASS_FAILED


class ConfigError(HostkitError):
    """One or more problems in a run file, plugins.toml or command line.

    ``problems`` holds every problem found, each already prefixed with its
    TOML path, so that a user fixes them all in one go.
    """

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = where + self.problems[0]
        else:
            head = f"{source}: {len(self.problems)} problems" if source else f"{len(self.problems)} problems"
            message = head + "\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


class PluginLoadError(HostkitError):
    """A plugin that a run needs cannot be imported or registered."""

    exit_code = EXIT_PLUGIN


class PassError(HostkitError):
    """An expected failure inside a pass (bad data, missing file, ...).

    Plugins raise it (or a subclass) with a message a user can act on; the host
    adds the step, its TOML path and the plugin's distribution and version.
    """

    exit_code = EXIT_PASS_FAILED


class MissingRequirement(PassError):
    """A library or a device a pass needs is not available."""
