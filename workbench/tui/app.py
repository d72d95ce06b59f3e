"""WorkbenchApp: the terminal workbench. App → MainScreen → widgets; styles in app.tcss.

Importing this module loads Textual and nothing heavy: redis, numpy and the engine load in workers
after the first frame (checked by tests/test_tui_startup.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.screen import Screen

from workbench.tui.backend import Backend
from workbench.tui.clipboard import CopyReport, copy_with_os_tool, osc52
from workbench.tui.history import PromptHistory, history_file
from workbench.tui.screens.main import MainScreen
from workbench.tui.settings import TuiSettings


class WorkbenchApp(App[None]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere keep the styles
    TITLE = "workbench"
    ENABLE_COMMAND_PALETTE = True

    def __init__(self, backend: Backend, data_dir: Path) -> None:
        super().__init__()
        self.backend = backend
        self.data_dir = data_dir
        self.settings_path = data_dir / "tui" / "settings.json"
        self.settings = TuiSettings.load(self.settings_path)
        self.history = PromptHistory(history_file(data_dir, backend.options.repo)).load()
        self.copied: list[CopyReport] = []  # what was copied, newest last (tests, the status)
        from textual.theme import Theme

        from themes import DEFAULT_THEME, load_themes

        # Before the stylesheet is parsed: app.tcss uses the themes' own variables.
        for spec in load_themes():
            self.register_theme(Theme(**spec.theme_kwargs()))
        self.theme = self.settings.theme if self.settings.theme in self.available_themes else DEFAULT_THEME

    def on_mount(self) -> None:
        self.push_screen(MainScreen())

    def watch_theme(self, theme: str) -> None:
        if theme != self.settings.theme:
            self.settings.theme = theme
            self.save_settings()

    def save_settings(self) -> None:
        try:
            self.settings.save(self.settings_path)
        except OSError as exc:
            self.notify(f"settings not saved: {exc}", severity="warning")

    # -- copying ------------------------------------------------------------------------------------

    def copy_text(self, text: str, what: str) -> None:
        """Copy through every path that may reach the user's clipboard, and say which were used."""
        sequence, route = osc52(text)
        self._clipboard = text
        paths = []
        if self._driver is not None and not self.is_headless:
            self._driver.write(sequence)
            paths.append(route)
        tool = copy_with_os_tool(text)
        if tool:
            paths.append(tool)
        report = CopyReport(chars=len(text), lines=text.count("\n") + 1, paths=paths)
        self.copied.append(report)
        self.notify(report.describe(what), title="Copied")

    # -- the command palette -------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if not isinstance(screen, MainScreen):
            return
        main = screen
        yield SystemCommand("New session", "Start a new conversation (Ctrl+N)", main.action_new_session)
        yield SystemCommand(
            "Sessions", "Show or hide the sessions sidebar (Ctrl+O)", main.action_toggle_sessions
        )
        yield SystemCommand(
            "Context panel", "Retrieved code and the cache report (Ctrl+L)", main.action_toggle_context
        )
        yield SystemCommand("Copy reply", "Copy the last reply (Ctrl+R)", main.action_copy_reply)
        yield SystemCommand(
            "Copy code block", "Copy a code block of the last reply (Ctrl+B)", main.action_copy_block
        )
        yield SystemCommand("Toggle RAG", "Retrieve code from the index for the next turns", self._toggle_rag)
        yield SystemCommand("Toggle thinking", "Let the model reason first (Qwen3)", self._toggle_thinking)
        yield SystemCommand("Re-index", "Bring the repository's index up to date now", self._reindex)
        yield SystemCommand("Export session", "Write the session as Markdown into the repo", self._export)
        yield SystemCommand("Switch model", "Use another local model for the next turns", self._switch_model)

    def _main(self) -> MainScreen:
        return next(s for s in self.screen_stack if isinstance(s, MainScreen))

    def _toggle_rag(self) -> None:
        main = self._main()
        main.rag = not (main.rag if main.rag is not None else True)
        self.notify(f"RAG {'on' if main.rag else 'off'} for the next turns")

    def _toggle_thinking(self) -> None:
        main = self._main()
        main.thinking = not bool(main.thinking)
        self.notify(f"Thinking {'on' if main.thinking else 'off'} for the next turns")

    def _reindex(self) -> None:
        self.run_worker(self.backend.reindex, thread=True, group="reindex")
        self.notify("Re-indexing the repository")

    def _export(self) -> None:
        main = self._main()
        if main.session_id:
            main.session_job("export", main.session_id)
        else:
            self.notify("No session yet: send a prompt first", severity="warning")

    def _switch_model(self) -> None:
        from workbench.tui.screens.modals import TextPromptScreen

        def chosen(name: str | None) -> None:
            if name and name.strip():
                self.backend.options.model = name.strip()
                self._main().query_one("#status").change(model=name.strip())  # type: ignore[attr-defined]
                self.notify(f"Next turns use {name.strip()}")

        self.push_screen(
            TextPromptScreen("Model (Hugging Face id or directory):", self.backend.model_name()), chosen
        )

    async def on_unmount(self) -> None:
        # Finish writing KV blocks and release the session leases, off the event loop.
        await asyncio.to_thread(self.backend.close)


def default_data_dir() -> Path:
    from core.paths import data_dir

    return data_dir()


def is_terminal() -> bool:
    return os.isatty(0) and os.isatty(1)
