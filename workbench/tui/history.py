"""The prompt history, one file per repository, kept across runs (Up/Down in the prompt)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MAX_ENTRIES = 500


def history_file(data_dir: Path, repo: str) -> Path:
    digest = hashlib.sha256(repo.encode("utf-8")).hexdigest()[:16]
    return data_dir / "tui" / "history" / f"{digest}.jsonl"


class PromptHistory:
    """Entries oldest first; `previous`/`following` walk them from the newest, like a shell."""

    def __init__(self, path: Path | None = None) -> None:  # None: kept in memory only
        self.path = path
        self.entries: list[str] = []
        self._cursor: int | None = None  # index into entries while walking; None: not walking
        self._draft = ""

    def load(self) -> PromptHistory:
        if self.path is None:
            return self
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return self
        for line in lines[-MAX_ENTRIES:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a crash: skip it, keep the rest
            if isinstance(entry, str):
                self.entries.append(entry)
        return self

    def add(self, text: str) -> None:
        self._cursor = None
        if not text.strip() or (self.entries and self.entries[-1] == text):
            return
        self.entries.append(text)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if len(self.entries) > MAX_ENTRIES:
            self.entries = self.entries[-MAX_ENTRIES:]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(e) + "\n" for e in self.entries), encoding="utf-8")
            os.replace(tmp, self.path)
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(text) + "\n")

    def previous(self, draft: str) -> str | None:
        """The entry before the current one (the newest first time); None at the oldest."""
        if not self.entries:
            return None
        if self._cursor is None:
            self._draft = draft
            self._cursor = len(self.entries)
        if self._cursor == 0:
            return None
        self._cursor -= 1
        return self.entries[self._cursor]

    def following(self) -> str | None:
        """The entry after the current one; past the newest, the draft typed before walking."""
        if self._cursor is None:
            return None
        self._cursor += 1
        if self._cursor >= len(self.entries):
            self._cursor = None
            return self._draft
        return self.entries[self._cursor]
