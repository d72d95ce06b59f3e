"""Which blocks their holders still reference, so gc never removes a block another holder shares.

A holder (for Workbench, a session) pins the chain of its history (every complete block's key plus its
tail record). gc keeps every pinned key in every tier; a removed holder unpins, which releases only keys
no other pin names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path


class FileRefs:
    """Pins as files `root/<digest of holder>.pin`: the holder's name on line one, then one key per line.

    Files (not process memory) so that every process on this machine sees the same pins, and each file is
    replaced atomically so a reader never sees half a pin list.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, holder: str) -> Path:
        return self.root / f"{hashlib.blake2b(holder.encode(), digest_size=16).hexdigest()}.pin"

    def set(self, holder: str, keys: list[str]) -> None:
        path = self._path(holder)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with self._lock:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(holder + "\n" + "".join(k + "\n" for k in keys))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)

    def remove(self, holder: str) -> bool:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(holder))
            return True
        return False

    def keys_of(self, holder: str) -> list[str]:
        try:
            lines = self._path(holder).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return lines[1:]

    def holders(self) -> list[str]:
        out = []
        for path in self.root.glob("*.pin"):
            with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
                out.append(f.readline().rstrip("\n"))
        return out

    def pinned(self) -> set[str]:
        keys: set[str] = set()
        for path in self.root.glob("*.pin"):
            with contextlib.suppress(FileNotFoundError):
                keys.update(path.read_text(encoding="utf-8").splitlines()[1:])
        return keys
