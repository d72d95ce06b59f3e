"""Language detection (extension, then shebang) and the tree-sitter grammars we chunk with.

Grammars come from `tree-sitter-language-pack` 0.x, whose wheel carries every compiled parser.
(1.x downloads its parsers at first use, which an offline machine cannot do: pinned below 1.)
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import PurePosixPath
from typing import Any

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go", ".rs": "rust",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".java": "java",
    ".md": "markdown", ".rst": "rst", ".txt": "text",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".ini": "ini", ".cfg": "ini",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".html": "html", ".css": "css", ".scss": "css", ".tcss": "css", ".sql": "sql",
    ".rb": "ruby", ".php": "php", ".kt": "kotlin", ".swift": "swift", ".cs": "csharp",
    ".lua": "lua", ".zig": "zig",
}  # fmt: skip

FILENAMES: dict[str, str] = {
    "Makefile": "make", "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake",
    "Cargo.toml": "toml", "go.mod": "go-mod",
}  # fmt: skip

SHEBANG = re.compile(rb"^#!\S*?(?:/env\s+)?(?:\S*/)?(python|node|bash|sh|zsh|ruby|perl)\d*(?:\.\d+)?\b")
SHEBANG_LANGUAGE = {
    b"python": "python", b"node": "javascript", b"bash": "shell", b"sh": "shell", b"zsh": "shell",
    b"ruby": "ruby", b"perl": "perl",
}  # fmt: skip

# The languages whose definitions the chunker knows (chunk.py); others fall back to line windows.
GRAMMARS: frozenset[str] = frozenset(
    {"python", "javascript", "typescript", "tsx", "go", "rust", "c", "cpp", "java"}
)


def detect_language(relpath: str, head: bytes) -> str:
    """The language of a file from its name, else from a shebang line; "text" when unknown."""
    name = PurePosixPath(relpath).name
    if name in FILENAMES:
        return FILENAMES[name]
    language = EXTENSIONS.get(PurePosixPath(name).suffix.lower())
    if language:
        return language
    match = SHEBANG.match(head)
    if match:
        return SHEBANG_LANGUAGE[match.group(1)]
    return "text"


def parser_for(language: str) -> Any | None:
    """A fresh tree-sitter parser for `language` (parsers are not shareable across threads), or None
    when we have no grammar for it (line windows then)."""
    grammar = _grammar(language)
    if grammar is None:
        return None
    import tree_sitter

    return tree_sitter.Parser(grammar)


@cache
def _grammar(language: str) -> Any | None:
    if language not in GRAMMARS:
        return None
    from tree_sitter_language_pack import get_language

    return get_language(language)  # type: ignore[arg-type]
