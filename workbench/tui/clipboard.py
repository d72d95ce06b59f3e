"""Copying text out of a full-screen app: OSC 52 (wrapped for tmux), then the OS clipboard tools.

Textual's own `copy_to_clipboard` writes a bare OSC 52, which tmux drops unless `allow-passthrough` is
on and which many terminals ignore; over SSH the OS tools are on the wrong machine. So both go out: the
escape sequence (reaches the local terminal through SSH and tmux) and the first OS tool found (works
where the terminal ignores OSC 52). The caller is told which paths were used.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

# Tried in order; each reads the text on stdin.
OS_TOOLS: tuple[tuple[str, ...], ...] = (
    ("pbcopy",),
    ("wl-copy",),
    ("xclip", "-selection", "clipboard"),
    ("xsel", "--clipboard", "--input"),
    ("clip.exe",),
)


@dataclass
class CopyReport:
    chars: int
    lines: int
    paths: list[str]  # e.g. ["OSC 52 via tmux", "xclip"]

    def describe(self, what: str) -> str:
        size = f"{self.lines} line{'s' * (self.lines != 1)}, {self.chars:,} chars"
        return f"Copied {what} ({size}) via {', '.join(self.paths) or 'nothing: no clipboard found'}"


def osc52(text: str, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The escape sequence that sets the terminal's clipboard, and how it travels ("OSC 52 via tmux")."""
    env = os.environ if env is None else env
    payload = base64.b64encode(text.encode("utf-8")).decode("ascii")
    sequence = f"\x1b]52;c;{payload}\a"
    if env.get("TMUX"):
        # tmux passes a DCS-wrapped sequence to the outer terminal; ESCs inside are doubled.
        return "\x1bPtmux;" + sequence.replace("\x1b", "\x1b\x1b") + "\x1b\\", "OSC 52 via tmux"
    if env.get("TERM", "").startswith("screen"):
        return "\x1bP" + sequence + "\x1b\\", "OSC 52 via screen"
    return sequence, "OSC 52"


def copy_with_os_tool(text: str, env: Mapping[str, str] | None = None) -> str | None:
    """Copy with the first clipboard tool that works here; its name, or None."""
    env = os.environ if env is None else env
    for tool in OS_TOOLS:
        if tool[0] == "wl-copy" and not env.get("WAYLAND_DISPLAY"):
            continue
        if tool[0] in ("xclip", "xsel") and not env.get("DISPLAY"):
            continue
        if shutil.which(tool[0]) is None:
            continue
        try:
            subprocess.run(tool, input=text.encode("utf-8"), timeout=3, check=True, capture_output=True)
        except (OSError, subprocess.SubprocessError):
            continue
        return tool[0]
    return None
