"""The Workbench themes are data: they load without Textual, register with a Textual app, and resolve
their own variables."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from textual.app import App
from textual.theme import Theme

from themes import DEFAULT_THEME, load_themes


def test_both_themes_load_with_their_variables() -> None:
    themes = {t.name: t for t in load_themes()}
    assert {"workbench-dark", "workbench-light", "workbench-ember", "workbench-contrast"} <= set(themes)
    assert themes["workbench-dark"].dark and not themes["workbench-light"].dark
    for theme in themes.values():
        assert {"reasoning-foreground", "cache-hit", "cache-miss"} <= set(theme.variables)


def test_an_app_can_switch_to_each_theme() -> None:
    asyncio.run(_switch_themes())


async def _switch_themes() -> None:
    app = App()
    async with app.run_test():
        for spec in load_themes():
            theme = Theme(**spec.theme_kwargs())
            app.register_theme(theme)
            app.theme = theme.name
            variables = app.get_css_variables()
            assert variables["reasoning-foreground"] == theme.variables["reasoning-foreground"]
        app.theme = DEFAULT_THEME
        assert app.current_theme.name == DEFAULT_THEME


def test_a_bad_theme_entry_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[broken]\nprimary = "#ffffff"\nsparkle = "yes"\n')
    with pytest.raises(ValueError, match="theme 'broken'"):
        load_themes(bad)


def test_importing_and_loading_themes_loads_no_textual() -> None:
    code = (
        "import sys, themes; themes.load_themes(); print([m for m in sys.modules if m.startswith('textual')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
