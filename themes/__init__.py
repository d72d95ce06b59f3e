"""Workbench's Textual themes, kept as data in `workbench.toml` beside this file.

The TUI registers them with `for theme in load_themes(): app.register_theme(theme)`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textual.theme import Theme

THEMES_FILE = Path(__file__).with_name("workbench.toml")
DEFAULT_THEME = "workbench-dark"


def load_themes(path: Path = THEMES_FILE) -> list[Theme]:
    """Every theme in the TOML file, as Textual Theme objects (a bad entry names itself)."""
    from textual.theme import Theme

    themes = []
    for name, table in tomllib.loads(path.read_text()).items():
        fields = dict(table)
        variables = fields.pop("variables", {})
        try:
            themes.append(Theme(name=name, variables=variables, **fields))
        except TypeError as exc:
            raise ValueError(f"theme {name!r} in {path}: {exc}") from None
    return themes
