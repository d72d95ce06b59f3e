"""What the TUI remembers between runs (theme, panels): a small JSON file in the data dir."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass
class TuiSettings:
    theme: str = "workbench-dark"
    show_sessions: bool = False
    show_context: bool = False
    all_repos: bool = False

    @classmethod
    def load(cls, path: Path) -> TuiSettings:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return cls()
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        os.replace(tmp, path)
