"""Helpers shared by the indexer tests: a small multi-language fixture repo, the expected Vector Set
membership computed from the files themselves, and a byte-level tokenizer that round-trips text."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from indexer.chunk import chunk_file
from indexer.scan import read_source
from indexer.store import element_name

FIXTURE_FILES: dict[str, str] = {
    "app/server.py": '''"""A tiny HTTP-ish server."""

import socket


class RequestRouter:
    """Routes a request path to its handler."""

    def __init__(self):
        self.routes = {}

    def add_route(self, path, handler):
        self.routes[path] = handler

    def dispatch(self, path):
        return self.routes[path]()


def parse_http_header(line):
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()
''',
    "app/util.py": """def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def slugify(title):
    return "-".join(title.lower().split())
""",
    "web/cart.ts": """export interface CartItem { sku: string; quantity: number }

export function totalQuantity(items: CartItem[]): number {
  return items.reduce((sum, item) => sum + item.quantity, 0);
}

export class ShoppingCart {
  private items: CartItem[] = [];
  addItem(item: CartItem): void { this.items.push(item); }
}
""",
    "cmd/main.go": """package main

import "fmt"

func computeChecksum(data []byte) uint32 {
	var sum uint32
	for _, b := range data {
		sum = sum*31 + uint32(b)
	}
	return sum
}

func main() { fmt.Println(computeChecksum([]byte("hi"))) }
""",
    "src/lib.rs": """pub struct Matrix { rows: usize, cols: usize }

impl Matrix {
    pub fn transpose(&self) -> Matrix { Matrix { rows: self.cols, cols: self.rows } }
}
""",
    "README.md": "# Fixture\n\nA repository used by the indexer tests.\nIt has several languages.\n",
    ".gitignore": "secret/\n*.log\n",
    "secret/keys.py": "API_KEY = 'do-not-index'\n",
    "debug.log": "noise that must never be indexed\n",
    "node_modules/pkg/index.js": "module.exports = 1;\n",
}


def write_repo(root: Path, files: dict[str, str] | None = None) -> Path:
    for rel, text in (files or FIXTURE_FILES).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def expected_elements(root: Path, relpaths: list[str]) -> set[str]:
    """The element names the index must hold for these files, computed from the files as they are."""
    out: set[str] = set()
    for rel in relpaths:
        src = read_source(root, rel)
        assert not isinstance(src, str), f"{rel}: {src}"
        names: set[str] = set()
        out |= {element_name(c, names) for c in chunk_file(rel, src.text, src.language)}
    return out


def vset_members(redis: Any, key: str) -> set[str]:
    card = redis.execute_command("VCARD", key) if redis.exists(key) else 0
    if not card:
        return set()
    return {m.decode() for m in redis.execute_command("VRANDMEMBER", key, card)}


class ByteLevelTokenizer:
    """A small byte-level BPE trained on the fixture text: decode(encode(text)) == text exactly."""

    def __init__(self, corpus: list[str]) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
        self._tok = tok
        self.identity = hashlib.sha256(tok.to_str().encode()).hexdigest()
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        self.calls += 1
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


def write_many(root: Path, n: int) -> Path:
    """`n` small Python files of two functions each (distinct texts: nothing is shared between files),
    enough for a pass that lasts seconds."""
    for i in range(n):
        path = root / f"pkg{i % 10}" / f"mod_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f'def handler_{i}(request):\n    """Handle request number {i}."""\n'
            f"    return request.value * {i} + {i * 7}\n\n\n"
            f"def helper_{i}(x):\n    return [x] * {i % 5 + 1}\n",
            encoding="utf-8",
        )
    return root
