"""The Workbench themes load, register with a Textual app, and resolve their own variables."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.app import App

from themes import DEFAULT_THEME, load_themes


def test_both_themes_load_with_their_variables() -> None:
    themes = {t.name: t for t in load_themes()}
    assert set(themes) == {"workbench-dark", "workbench-light"}
    assert themes["workbench-dark"].dark and not themes["workbench-light"].dark
    for theme in themes.values():
        assert {"reasoning-foreground", "cache-hit", "cache-miss"} <= set(theme.variables)


def test_an_app_can_switch_to_each_theme() -> None:
    asyncio.run(_switch_themes())


async def _switch_themes() -> None:
    app = App()
    async with app.run_test():
        for theme in load_themes():
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
