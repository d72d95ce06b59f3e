"""Workbench's themes as data (`workbench.toml` beside this file): no Textual code lives here.

Only `workbench/tui/` imports Textual; it turns each spec into a Textual theme:
`for spec in load_themes(): app.register_theme(Theme(**spec.theme_kwargs()))`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

THEMES_FILE = Path(__file__).with_name("workbench.toml")
DEFAULT_THEME = "workbench-dark"
# The keyword arguments of textual.theme.Theme a table may set (besides `name` and `variables`).
PALETTE_KEYS = frozenset({
    "primary", "secondary", "warning", "error", "success", "accent", "foreground", "background",
    "surface", "panel", "boost", "dark", "luminosity_spread", "text_alpha", "ansi",
})  # fmt: skip


@dataclass(frozen=True)
class ThemeSpec:
    name: str
    palette: dict[str, Any] = field(default_factory=dict)  # PALETTE_KEYS -> colour, flag or number
    variables: dict[str, str] = field(default_factory=dict)  # CSS variables the Workbench screens use

    @property
    def dark(self) -> bool:
        return bool(self.palette.get("dark", True))

    def theme_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for textual.theme.Theme."""
        return {"name": self.name, **self.palette, "variables": dict(self.variables)}


def load_themes(path: Path = THEMES_FILE) -> list[ThemeSpec]:
    """Every theme in the TOML file (a bad entry names itself and the key at fault)."""
    specs = []
    for name, table in tomllib.loads(path.read_text()).items():
        palette = dict(table)
        variables = palette.pop("variables", {})
        unknown = sorted(set(palette) - PALETTE_KEYS)
        if unknown:
            raise ValueError(f"theme {name!r} in {path}: unknown key(s) {', '.join(unknown)}")
        if "primary" not in palette:
            raise ValueError(f"theme {name!r} in {path}: no primary colour")
        specs.append(ThemeSpec(name, palette, {str(k): str(v) for k, v in variables.items()}))
    return specs
