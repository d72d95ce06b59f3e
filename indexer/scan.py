"""Which files of a repo get indexed: `.gitignore` rules (nested files too), sane defaults, size limit.

Reading, decoding and binary checks happen when a file is read (`read_source`), so a file that vanishes
or changes between the walk and the read is handled in one place.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from indexer.languages import detect_language

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1_000_000
# Directories no one wants in a code index; matched by name at any depth.
DEFAULT_IGNORED_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox", ".nox", ".mypy_cache",
     ".pytest_cache", ".ruff_cache", "build", "dist", "target", ".idea", ".gradle", ".next", ".cache",
     "site-packages", "bower_components", ".eggs"}
)  # fmt: skip
DEFAULT_IGNORED_FILES = frozenset({".gitignore", ".gitattributes", ".gitmodules", ".DS_Store", "Thumbs.db"})
DEFAULT_IGNORED_SUFFIXES = (
    ".egg-info", ".pyc", ".pyo", ".so", ".dylib", ".dll", ".exe", ".o", ".a", ".class", ".jar", ".zip",
    ".gz", ".tgz", ".bz2", ".xz", ".7z", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".pdf",
    ".woff", ".woff2", ".ttf", ".otf", ".mp3", ".mp4", ".wav", ".mov", ".safetensors", ".bin", ".gguf",
    ".npy", ".npz", ".pt", ".onnx", ".sqlite", ".db", ".min.js", ".map", ".lock", "-lock.json",
)  # fmt: skip


@dataclass(frozen=True)
class SourceFile:
    """A file as read for indexing: decoded text, its sha256 and its language."""

    relpath: str
    text: str
    sha256: str
    language: str


@dataclass
class ScanResult:
    files: list[str] = field(default_factory=list)  # repo-relative posix paths, sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)
    complete: bool = True  # False: the walk stopped at its deadline (an estimate)


class IgnoreRules:
    """Answers "is this path ignored?" like git: root and nested `.gitignore`s, `.git/info/exclude`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._specs: dict[str, pathspec.GitIgnoreSpec | None] = {}

    def _spec(self, reldir: str) -> pathspec.GitIgnoreSpec | None:
        if reldir not in self._specs:
            lines: list[str] = []
            sources = [self.root / reldir / ".gitignore"]
            if reldir == "":
                sources.append(self.root / ".git" / "info" / "exclude")
            for source in sources:
                try:
                    lines += source.read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    continue
            self._specs[reldir] = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        return self._specs[reldir]

    def forget(self, reldir: str) -> None:
        """Drop the cached rules of one directory (its `.gitignore` changed)."""
        self._specs.pop(reldir, None)

    def is_ignored(self, relpath: str, is_dir: bool, parents_checked: bool = False) -> bool:
        parts = relpath.split("/")
        if any(part in DEFAULT_IGNORED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
            return True
        name = parts[-1]
        if is_dir and (name in DEFAULT_IGNORED_DIRS or name.endswith(".egg-info")):
            return True
        if not is_dir and (name in DEFAULT_IGNORED_FILES or name.lower().endswith(DEFAULT_IGNORED_SUFFIXES)):
            return True
        # A file inside an ignored directory is ignored even if no rule names the file itself.
        if not parents_checked and any(self._matched(parts[:i], True) for i in range(1, len(parts))):
            return True
        return self._matched(parts, is_dir)

    def _matched(self, parts: list[str], is_dir: bool) -> bool:
        """The deepest rule that matches decides (negations included), as in git."""
        decision: bool | None = None
        for depth in range(len(parts)):
            spec = self._spec("/".join(parts[:depth]))
            if spec is None:
                continue
            result = spec.check_file("/".join(parts[depth:]) + ("/" if is_dir else ""))
            if result.include is not None:
                decision = result.include
        return bool(decision)


def scan(root: Path, rules: IgnoreRules | None = None, deadline: float | None = None) -> ScanResult:
    """Walk `root` without following directory symlinks; files that cannot be candidates are skipped
    here with a logged reason (size, symlink loops, unreadable directories). With a `deadline`
    (time.monotonic()) the walk stops there and says so (`complete` False): a count to show, not a scan."""
    rules = rules or IgnoreRules(root)
    result = ScanResult()
    stack = [""]
    while stack:
        if deadline is not None and time.monotonic() > deadline:
            result.complete = False
            break
        reldir = stack.pop()
        try:
            with os.scandir(root / reldir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            _skip(result, reldir or ".", f"directory unreadable ({exc.strerror})")
            continue
        for entry in entries:
            rel = f"{reldir}/{entry.name}" if reldir else entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not rules.is_ignored(rel, True, parents_checked=True):
                        stack.append(rel)
                    continue
                if rules.is_ignored(rel, False, parents_checked=True):
                    continue
                reason = candidate_problem(root, rel)
            except OSError as exc:
                reason = f"cannot stat ({exc.strerror})"
            if reason:
                _skip(result, rel, reason)
            else:
                result.files.append(rel)
    result.files.sort()
    return result


def candidate_problem(root: Path, relpath: str) -> str | None:
    """Why a path that passed the ignore rules still cannot be indexed, or None."""
    path = root / relpath
    try:
        st = path.stat()  # follows symlinks: a loop raises ELOOP
    except FileNotFoundError:
        return "vanished or dangling symlink"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return f"cannot stat ({exc.strerror})"
    if path.is_symlink() and Path(os.path.realpath(path)).is_dir():
        return "symlink to a directory (not followed)"
    if not os.path.isfile(path):
        return "not a regular file"
    if st.st_size > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES} bytes ({st.st_size} bytes)"
    return None


def read_source(root: Path, relpath: str) -> SourceFile | str:
    """The decoded file, or the reason it is skipped (vanished, unreadable, binary, not UTF-8, too big)."""
    import hashlib

    problem = candidate_problem(root, relpath)
    if problem:
        return problem
    try:
        with open(root / relpath, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return "vanished before it could be read"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if len(data) > MAX_FILE_BYTES:
        return f"larger than {MAX_FILE_BYTES} bytes"
    if b"\x00" in data[:8192]:
        return "binary (NUL bytes)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {exc.start})"
    language = detect_language(relpath, data[:200])
    return SourceFile(relpath, text, hashlib.sha256(data).hexdigest(), language)


def _skip(result: ScanResult, relpath: str, reason: str) -> None:
    log.info("index: skipped %s: %s", relpath, reason)
    result.skipped.append((relpath, reason))
