"""Snapshots of the main screen (fixed size, fixed content): the chat with a code fence and collapsed
reasoning, the sessions sidebar and context panel open, the status bar. `--snapshot-update` rewrites them;
docs/tui.md shows the SVGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.headless_support import chat_model_dir
from tests.tui_support import make_app
from workbench.tui.screens.main import MainScreen
from workbench.tui.widgets.chat import AssistantMessage, ChatView, UserMessage
from workbench.tui.widgets.status import Status, StatusBar

REPLY = """The cache key is built in `block_key`:

```python
def block_key(space, tokens):
    return sha256(space.identity + tokens.tobytes()).hexdigest()
```

Each block of 64 tokens is stored once and shared by every session with that prefix."""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model_dir(tmp_path_factory.getbasetemp())


async def _fixed_screen(pilot: Any) -> None:
    app = pilot.app
    main = next(s for s in app.screen_stack if isinstance(s, MainScreen))
    while main.query_one(StatusBar).status.activity == "connecting" or not app.backend._service:
        await pilot.pause(0.05)
    await pilot.pause(0.3)
    main.query_one("#prompt").cursor_blink = False  # a blinking cursor races the screenshot
    chat = main.query_one(ChatView)
    await chat.remove_children()
    await chat.mount(UserMessage("Where is the KV block key computed?", 1))
    reply = AssistantMessage(REPLY, "The user asks about keys; look at kvstore.", 2)
    await chat.mount(reply)
    await reply.finish("stop · 31.4 tok/s · prompt 1,204 (1,152 cached)", 2)
    main.query_one(StatusBar).status = Status(
        model="Qwen/Qwen3-0.6B", backend="numpy", tok_s=31.4, context_used=1262, context_size=40960,
        activity="ready", index="index 412 files · 3,018 chunks", redis="redis ok 8.2",
    )  # fmt: skip
    main.query_one("#sessions").display = True
    main.query_one("#sessions-list").clear_options()
    main.query_one("#sessions-list").add_option("Where is the KV block key computed?\n[dim]now · 2 msgs[/]")
    await pilot.pause(0.2)


def test_the_main_screen(
    snap_compare: Any, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("snap")
    (base / "repo").mkdir()
    app = make_app(model_dir, base / "repo", base / "data")
    assert snap_compare(app, terminal_size=(120, 34), run_before=_fixed_screen)


CHANGE = """--- a/kvstore/keys.py
+++ b/kvstore/keys.py
@@ -10,3 +10,3 @@ def block_key(space, tokens):
-    return sha256(space.identity + tokens.tobytes()).hexdigest()
+    return blake2b(space.identity + tokens.tobytes(), digest_size=16).hexdigest()
"""


async def _approval_screen(pilot: Any) -> None:
    from sessions.events import ApprovalNeeded
    from workbench.tui.screens.approval import ApprovalScreen

    await _fixed_screen(pilot)
    ask = ApprovalNeeded("s1", call_id="c1", tool="edit_file", kind="edit", title="edit kvstore/keys.py",
                         preview=CHANGE, arguments={"path": "kvstore/keys.py"})  # fmt: skip
    pilot.app.push_screen(ApprovalScreen(ask))
    await pilot.pause(0.3)


async def _chunk_screen(pilot: Any) -> None:
    from sessions.events import RetrievedChunk
    from workbench.tui.screens.chunk import ChunkScreen

    await _fixed_screen(pilot)
    repo = pilot.app.backend.options.repo
    screen = ChunkScreen(repo, RetrievedChunk("kvstore/keys.py", 3, 5, "block_key", 0.91, 48))
    pilot.app.push_screen(screen)
    while not screen.code:
        await pilot.pause(0.05)
    await pilot.pause(0.2)


def _repo_with_keys(base: Path) -> Path:
    repo = base / "repo"
    (repo / "kvstore").mkdir(parents=True)
    lines = ["import hashlib", "", "def block_key(space, tokens):", '    """The content address."""',
             "    return hashlib.sha256(space.identity + tokens.tobytes()).hexdigest()", "", ""]  # fmt: skip
    (repo / "kvstore" / "keys.py").write_text("\n".join(lines))
    return repo


@pytest.mark.parametrize("name", ["approval", "chunk"])
def test_the_modal_screens(
    snap_compare: Any, model_dir: Path, tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    """The approval of a changing tool call (its diff highlighted) and a retrieved chunk opened from the
    context panel (its lines marked), over the main screen."""
    base = tmp_path_factory.mktemp(f"snap-{name}")
    app = make_app(model_dir, _repo_with_keys(base), base / "data")
    before = _approval_screen if name == "approval" else _chunk_screen
    assert snap_compare(app, terminal_size=(120, 34), run_before=before)
