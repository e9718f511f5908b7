"""Regenerate the option tables in the plugin READMEs from their attrs config classes.

    python tools/update_readme_tables.py            # every peft_plugins/*/README.md
    python tools/update_readme_tables.py --check    # change nothing; exit 1 if a table is stale
    python tools/update_readme_tables.py peft_plugins/lora

A README marks each table with ``<!-- options:PassType -->`` ... ``<!-- /options -->``;
the text between the markers is replaced by ``hostkit.schema.markdown_table`` of
the pass's config class (found through the installed entry points, or imported
from the folder when the plugin is not installed). ``tests/test_docs.py``
fails while a table is stale. Third-party plugins use the same code:
``python -m hostkit.scaffold update-readme FOLDER``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hostkit.scaffold import main

ROOT = Path(__file__).resolve().parents[1]


def plugin_folders() -> list[str]:
    """The plugin folders whose README has option tables (a library such as peft_plugins/adapters has none)."""
    return [str(p) for p in sorted((ROOT / "peft_plugins").glob("*/"))
            if (p / "pyproject.toml").is_file() and "<!-- options:" in _readme(p)]


def _readme(folder: Path) -> str:
    return (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""


if __name__ == "__main__":
    args = sys.argv[1:]
    flags = [a for a in args if a.startswith("-")]
    folders = [a for a in args if not a.startswith("-")] or plugin_folders()
    sys.exit(main(["update-readme", *flags, *folders]))
