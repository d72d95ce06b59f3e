"""Where Workbench keeps its data: one directory, overridable with WORKBENCH_HOME."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.errors import DataDirError


def data_dir() -> Path:
    """The user's data dir: sessions, KV blocks, the embedded Redis. Created on first use."""
    env = os.environ.get("WORKBENCH_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("workbench", appauthor=False))
    return ensure_writable(path)


def cache_dir() -> Path:
    """Rebuildable things (a Redis build, fingerprints): `$WORKBENCH_CACHE` or the user cache dir."""
    env = os.environ.get("WORKBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "workbench"


def ensure_writable(path: Path) -> Path:
    """Create `path` if needed and prove it is writable, or raise DataDirError naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe of its own (mkstemp), not one named by the pid: threads of one process probe at once
        # (a serve worker's request thread and the engine thread) and would unlink each other's.
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataDirError(
            f"data dir {path} is not writable ({exc.strerror or exc}); "
            "fix its permissions or set WORKBENCH_HOME to a writable directory"
        ) from None
    return path
