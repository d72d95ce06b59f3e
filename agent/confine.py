"""Keep every path a tool touches inside the repository root.

A path is resolved the way the operating system will follow it (symlinks included, every component),
then it must lie inside the resolved root. Writes never land in `.git/` (nor in a path whose resolved
form is inside it), and secrets files are flagged so that reading them goes through approval.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path, PurePosixPath

# Names (matched against the file name, case-insensitively) whose contents are credentials.
SECRET_PATTERNS = (
    ".env",
    ".env.*",
    "*.env",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.keystore",
    "*.jks",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".pgpass",
    ".npmrc",
    ".pypirc",
    "credentials",
    "credentials.*",
    "*.secret",
    "secrets.*",
)
# Directories whose whole contents are secrets.
SECRET_DIRS = (".ssh", ".gnupg", ".aws")


class PathRefused(Exception):
    """A path outside the repository, into `.git/`, or otherwise not allowed; the message names it."""


def is_secret(relpath: str) -> bool:
    """Whether a repository-relative path names a secrets file (by name, or under a secrets directory)."""
    parts = PurePosixPath(relpath.replace(os.sep, "/")).parts
    if not parts:
        return False
    if any(p.lower() in SECRET_DIRS for p in parts[:-1]):
        return True
    name = parts[-1].lower()
    if name in (".env.example", ".env.sample", ".env.template"):
        return False  # templates of a .env hold no secrets by convention
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_PATTERNS)


class Confinement:
    """The repository root and the rules for paths under it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        resolved = Path(root).resolve(strict=True)
        if not resolved.is_dir():
            raise PathRefused(f"repository root {root} is not a directory")
        self.root = resolved

    def resolve(self, path: str, *, write: bool = False) -> Path:
        """The absolute, symlink-free path of `path` (relative to the root, or absolute inside it).

        Raises PathRefused when it lies outside the root (after following symlinks, including a
        dangling one whose target is outside), or, with `write`, inside `.git/`.
        """
        if not isinstance(path, str) or not path.strip():
            raise PathRefused("path must be a non-empty string")
        if "\x00" in path:
            raise PathRefused(f"path {path!r} contains a NUL byte")
        candidate = Path(path).expanduser() if path.startswith("~") else Path(path)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        # strict=False follows every symlink that exists, dangling ones included, so a link to a
        # file outside the root that does not exist yet is still caught before a write creates it.
        resolved = Path(os.path.realpath(candidate))
        if not resolved.is_relative_to(self.root):
            raise PathRefused(f"path {path} is outside the repository ({self.root})")
        if write:
            self._check_writable(path, resolved)
        return resolved

    def _check_writable(self, path: str, resolved: Path) -> None:
        rel = resolved.relative_to(self.root)
        # Any `.git` component: the repository's own and a submodule's; lower() for case-insensitive disks.
        if any(part.lower() == ".git" for part in rel.parts):
            raise PathRefused(f"path {path} is inside .git/, which tools never write")
        if resolved == self.root:
            raise PathRefused(f"path {path} is the repository root itself")
        git_dir = self._git_dir()
        if git_dir is not None and resolved.is_relative_to(git_dir):
            raise PathRefused(f"path {path} is inside the repository's git directory")

    def _git_dir(self) -> Path | None:
        """The real git directory: `.git` itself, or the target of a worktree's `.git` file."""
        dot_git = self.root / ".git"
        if dot_git.is_file():
            try:
                first = dot_git.read_text(encoding="utf-8", errors="replace").splitlines()[0]
            except (OSError, IndexError):
                return None
            if first.startswith("gitdir:"):
                target = Path(first.removeprefix("gitdir:").strip())
                return Path(os.path.realpath(target if target.is_absolute() else self.root / target))
        return None

    def relative(self, resolved: Path) -> str:
        """The POSIX path relative to the root of an already resolved path ("." for the root)."""
        rel = resolved.relative_to(self.root).as_posix()
        return rel or "."

    def is_secret(self, resolved: Path) -> bool:
        return is_secret(self.relative(resolved))
