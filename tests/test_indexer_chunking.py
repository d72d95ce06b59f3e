"""Scanning (ignore rules, languages) and syntax-aware chunking."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from indexer.chunk import MAX_CHUNK_CHARS, MAX_CHUNK_LINES, WINDOW_LINES, WINDOW_OVERLAP, chunk_file
from indexer.languages import detect_language
from indexer.scan import IgnoreRules, scan


def symbols(path: str, text: str, language: str) -> list[str]:
    return [c.symbol for c in chunk_file(path, text, language) if c.symbol]


@pytest.mark.parametrize(
    ("language", "path", "source", "expected"),
    [
        ("python", "a.py", "import os\n\nclass A:\n    def f(self):\n        return 1\n\n"
         "def g():\n    pass\n", ["A", "g"]),
        ("javascript", "a.js", "export function foo(a) { return a; }\nclass Bar { m() {} }\n"
         "const arrow = (q) => q + 1;\n", ["foo", "Bar", "arrow"]),
        ("typescript", "a.ts", "interface I { a: number }\ntype T = string;\n"
         "export class C { m(): void {} }\n", ["I", "T", "C"]),
        ("go", "a.go", "package main\ntype T struct { A int }\nfunc (t *T) M() int { return t.A }\n"
         "func main() {}\n", ["T", "M", "main"]),
        ("rust", "a.rs", "struct S { a: i32 }\nimpl S { fn new() -> S { S { a: 1 } } }\nfn main() {}\n",
         ["S", "S", "main"]),
        ("c", "a.c", "#include <stdio.h>\nstatic int add(int a, int b) { return a + b; }\n"
         "struct point { int x; };\n", ["add", "point"]),
        ("cpp", "a.cpp", "namespace ns { int f(int a) { return a; } }\nvoid K::g() { }\n", ["ns", "K::g"]),
        ("java", "A.java", "package a;\npublic class A { int x; void m() {} }\n", ["A"]),
    ],
)  # fmt: skip
def test_definitions_become_named_chunks(language: str, path: str, source: str, expected: list[str]) -> None:
    assert detect_language(path, b"") == language
    assert symbols(path, source, language) == expected


def test_big_class_is_opened_into_methods_with_qualified_names() -> None:
    methods = "".join(f"    def method_{i}(self):\n" + "        x = 1\n" * 8 + "\n" for i in range(8))
    source = "class Big:\n    '''Doc.'''\n    limit = 3\n\n" + methods
    chunks = chunk_file("big.py", source, "python")
    assert [c.symbol for c in chunks] == ["Big"] + [f"Big.method_{i}" for i in range(8)]
    header = chunks[0]
    assert (header.start_line, header.text.splitlines()[0]) == (1, "class Big:")
    lines = source.splitlines(keepends=True)
    for c in chunks:  # text and line numbers agree with the file
        assert c.text == "".join(lines[c.start_line - 1 : c.end_line])


def test_long_function_is_split_into_overlapping_windows_keeping_its_name() -> None:
    source = "def long():\n" + "".join(f"    v{i} = {i}\n" for i in range(150))
    chunks = chunk_file("long.py", source, "python")
    assert {c.symbol for c in chunks} == {"long"} and len(chunks) == 3
    assert all(c.end_line - c.start_line + 1 <= MAX_CHUNK_LINES for c in chunks)
    assert all(b.start_line <= a.end_line for a, b in itertools.pairwise(chunks))  # overlap
    assert chunks[0].start_line == 1 and chunks[-1].end_line == 151


def test_text_without_grammar_falls_back_to_line_windows_with_overlap() -> None:
    source = "".join(f"line {i}\n" for i in range(100))
    chunks = chunk_file("notes.md", source, "markdown")
    assert [c.start_line for c in chunks] == [1, 1 + WINDOW_LINES - WINDOW_OVERLAP, 65]
    assert chunks[-1].end_line == 100 and all(c.symbol == "" for c in chunks)
    assert chunk_file("empty.md", "\n\n  \n", "markdown") == []


def test_language_detection_by_extension_name_and_shebang() -> None:
    assert detect_language("x/tool", b"#!/usr/bin/env python3\nprint(1)") == "python"
    assert detect_language("run", b"#!/bin/bash\n") == "shell"
    assert detect_language("Makefile", b"") == "make"
    assert detect_language("web/App.tsx", b"") == "tsx"
    assert detect_language("LICENSE", b"MIT") == "text"


def test_scan_follows_nested_gitignores_and_defaults(tmp_path: Path) -> None:
    files = {
        ".gitignore": "*.log\nbuild/\n!keep.log\n",
        "a.py": "", "keep.log": "", "drop.log": "", "build/out.py": "", "node_modules/x/i.js": "",
        "pkg/.gitignore": "generated_*.py\n", "pkg/generated_api.py": "", "pkg/real.py": "",
        "pkg/sub/generated_x.py": "", ".venv/lib.py": "", "pkg/__pycache__/m.pyc": "", "img.png": "",
        "docs/guide.md": "",
    }  # fmt: skip
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert scan(tmp_path).files == ["a.py", "docs/guide.md", "keep.log", "pkg/real.py"]
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored("pkg/sub/generated_x.py", False)
    assert rules.is_ignored("build/deep/new.py", False)  # inside an ignored directory
    assert not rules.is_ignored("pkg/new.py", False)


def test_scan_does_not_follow_directory_symlinks_or_loops(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "m.py").write_text("x = 1\n")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (tmp_path / "self_loop").symlink_to(tmp_path / "self_loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    result = scan(tmp_path)
    assert result.files == ["real/m.py"]
    reasons = dict(result.skipped)
    assert reasons["self_loop"] == "symlink loop"
    assert reasons["alias"] == "symlink to a directory (not followed)"
    assert reasons["dangling"] == "vanished or dangling symlink"


@pytest.mark.timeout(10)
def test_lines_longer_than_the_chunk_limit_become_one_chunk_each() -> None:
    # Minified code: every line alone is over the character budget of a chunk.
    long_line = "x = [" + "1, " * (MAX_CHUNK_CHARS // 2) + "]\n"
    text = long_line * 3
    chunks = chunk_file("min.txt", text, "text")
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 1), (2, 2), (3, 3)]
    assert "".join(c.text for c in chunks) == text
