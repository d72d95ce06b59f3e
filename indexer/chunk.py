"""Split a source file into chunks: definitions via tree-sitter, everything else in line windows.

Functions, classes and methods become chunks named by their qualified symbol ("Console.print"); a
definition too long for one chunk is split into overlapping windows that keep its name; a big class is
opened up so its methods are chunks of their own and its remaining lines (signature, attributes) form
chunks named after the class. Lines outside any definition (imports, module code, prose) and files with
no grammar become line windows with overlap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from indexer.languages import parser_for

MAX_CHUNK_LINES = 60
MAX_CHUNK_CHARS = 3000
WINDOW_LINES = 40
WINDOW_OVERLAP = 8

# Node types that define something worth a chunk of its own, per language.
DEFINITIONS: dict[str, frozenset[str]] = {
    "python": frozenset({"function_definition", "class_definition", "decorated_definition"}),
    "javascript": frozenset({"function_declaration", "generator_function_declaration", "class_declaration",
                             "method_definition", "lexical_declaration", "export_statement"}),
    "go": frozenset({"function_declaration", "method_declaration", "type_declaration"}),
    "rust": frozenset({"function_item", "impl_item", "struct_item", "enum_item", "trait_item", "mod_item",
                       "macro_definition", "union_item"}),
    "c": frozenset({"function_definition", "struct_specifier", "enum_specifier", "union_specifier"}),
    "cpp": frozenset({"function_definition", "class_specifier", "struct_specifier", "namespace_definition",
                      "enum_specifier", "template_declaration"}),
    "java": frozenset({"class_declaration", "interface_declaration", "enum_declaration", "method_declaration",
                       "constructor_declaration", "record_declaration", "annotation_type_declaration"}),
}  # fmt: skip
DEFINITIONS["typescript"] = DEFINITIONS["javascript"] | {
    "interface_declaration", "type_alias_declaration", "enum_declaration", "abstract_class_declaration",
    "function_signature", "module", "internal_module",
}  # fmt: skip
DEFINITIONS["tsx"] = DEFINITIONS["typescript"]

# Definitions whose body holds further definitions (opened up when too big for one chunk).
CONTAINERS = frozenset({
    "class_definition", "decorated_definition", "class_declaration", "abstract_class_declaration",
    "interface_declaration", "impl_item", "trait_item", "mod_item", "class_specifier", "struct_specifier",
    "namespace_definition", "enum_declaration", "export_statement", "template_declaration", "module",
    "internal_module", "record_declaration", "declaration_list", "class_body", "block",
})  # fmt: skip
WRAPPERS = frozenset({"decorated_definition", "export_statement", "template_declaration"})
NAME_TYPES = frozenset({"identifier", "field_identifier", "type_identifier", "property_identifier",
                        "qualified_identifier", "destructor_name", "operator_name", "scoped_identifier",
                        "namespace_identifier"})  # fmt: skip


@dataclass(frozen=True)
class Chunk:
    path: str
    start_line: int  # 1-based, inclusive
    end_line: int
    language: str
    symbol: str  # qualified name ("Console.print"), "" for plain line windows
    text: str
    content_hash: str  # sha256 of `text`, 32 hex digits: the key of token blobs

    @property
    def embed_text(self) -> str:
        """What the encoder sees: the symbol as context line, then the code."""
        return f"{self.symbol}\n{self.text}" if self.symbol else self.text


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def chunk_file(path: str, text: str, language: str) -> list[Chunk]:
    """All chunks of one file, ordered by start line."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    spans: list[tuple[int, int, str]] = []  # (first row, last row, symbol), 0-based rows
    containers: list[tuple[int, int, str]] = []
    parser = parser_for(language)
    if parser is not None:
        tree = parser.parse(text.encode("utf-8"))
        _collect(tree.root_node, DEFINITIONS.get(language, frozenset()), "", spans, containers)
    covered = [False] * len(lines)
    chunks: list[Chunk] = []
    for first, last, symbol in spans:
        for row in range(first, last + 1):
            covered[row] = True
        chunks += _windows(path, lines, first, last, language, symbol, MAX_CHUNK_LINES, 6)
    row = 0
    while row < len(lines):
        if covered[row]:
            row += 1
            continue
        start = row
        while row < len(lines) and not covered[row]:
            row += 1
        # A gap may start at a decorator just above its class: name it by its last line then.
        symbol = _innermost(containers, start) or _innermost(containers, row - 1)
        chunks += _windows(path, lines, start, row - 1, language, symbol, WINDOW_LINES, WINDOW_OVERLAP)
    chunks.sort(key=lambda c: (c.start_line, c.end_line))
    return chunks


def _collect(
    node: Any,
    kinds: frozenset[str],
    context: str,
    spans: list[tuple[int, int, str]],
    containers: list[tuple[int, int, str]],
) -> None:
    for child in node.named_children:
        if child.type not in kinds:
            if child.named_child_count and child.type in CONTAINERS | {"program", "translation_unit"}:
                _collect(child, kinds, context, spans, containers)
            continue
        name = _name(child)
        symbol = f"{context}.{name}" if context and name else (name or context)
        first, last = child.start_point[0], _last_row(child)
        size_ok = last - first + 1 <= MAX_CHUNK_LINES and child.end_byte - child.start_byte <= MAX_CHUNK_CHARS
        if size_ok or not _has_definitions(child, kinds):
            spans.append((first, last, symbol))
        elif child.type in WRAPPERS:  # a decorator or `export` around the real definition
            _collect(child, kinds, context, spans, containers)
        else:
            containers.append((first, last, symbol))
            _collect(child, kinds, symbol, spans, containers)


def _has_definitions(node: Any, kinds: frozenset[str], depth: int = 0) -> bool:
    if depth > 3:
        return False
    return any(c.type in kinds or _has_definitions(c, kinds, depth + 1) for c in node.named_children)


def _last_row(node: Any) -> int:
    # A node ending at column 0 stops at the end of the previous line.
    row, col = node.end_point
    return max(node.start_point[0], row - 1) if col == 0 else row


def _name(node: Any) -> str:
    """The defined name: the `name` field, a C declarator, a JS `const f = ...`, a Rust impl's type."""
    for field in ("name", "definition", "declaration", "declarator", "type"):
        target = node.child_by_field_name(field)
        if target is None:
            continue
        if target.type in NAME_TYPES:
            return _text(target)
        nested = _name(target) or _first_name(target)
        if nested:
            return nested
    for child in node.named_children:
        if child.type in ("variable_declarator", "type_spec", "function_declarator"):
            return _name(child)
    return ""


def _first_name(node: Any, depth: int = 0) -> str:
    if node.type in NAME_TYPES:
        return _text(node)
    if depth > 4:
        return ""
    for child in node.named_children:
        found = _first_name(child, depth + 1)
        if found:
            return found
    return ""


def _text(node: Any) -> str:
    return node.text.decode("utf-8", errors="replace") if node.text else ""


def _innermost(containers: list[tuple[int, int, str]], row: int) -> str:
    best: tuple[int, int, str] | None = None
    for first, last, symbol in containers:
        if first <= row <= last and (best is None or first >= best[0]):
            best = (first, last, symbol)
    return best[2] if best else ""


def _windows(
    path: str, lines: list[str], first: int, last: int, language: str, symbol: str, size: int, overlap: int
) -> list[Chunk]:
    """Rows first..last as one chunk, or overlapping windows when too long; blank-only text is dropped."""
    out: list[Chunk] = []
    start = first
    while start <= last:
        end = min(last, start + size - 1)
        # Keep windows under the char limit too (minified or very long lines).
        while end > start and sum(len(x) for x in lines[start : end + 1]) > MAX_CHUNK_CHARS:
            end = start + (end - start) // 2  # reaches `start`: one over-long line is one chunk
        text = "".join(lines[start : end + 1])
        if text.strip():
            out.append(Chunk(path, start + 1, end + 1, language, symbol, text, content_hash(text)))
        if end >= last:
            break
        start = max(start + 1, end + 1 - overlap)
    return out
