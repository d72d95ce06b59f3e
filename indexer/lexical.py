"""The lexical signal: BM25 over chunk text, symbol and path, with postings kept in Redis.

Terms are words and identifiers, lowercased; an identifier also contributes its camelCase/snake_case parts
(`parseHTTPHeader` -> parsehttpheader, parse, http, header), and a light suffix stemmer lets "renders"
find `render`. Postings live in one hash per term (`lx:t:<term>`: element -> term frequency), document
lengths in `lx:len`, and corpus totals in `lx:stats`, so adding or removing a chunk touches only its own
terms: updates are incremental.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

K1 = 1.2
B = 0.75
MAX_TERM_LEN = 40

WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "if", "in", "into", "is",
    "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "will", "with", "which",
    "when", "then", "than", "there", "these", "those", "been", "not", "no", "do", "does", "given",
})  # fmt: skip


def stem(word: str) -> str:
    """A deliberately light stemmer: plural and -ing/-ed forms map to the base word."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """All index terms of `text`, in order, with repeats (term frequency counts them)."""
    out: list[str] = []
    for match in WORD.finditer(text):
        word = match.group(0)
        parts = [p for p in CAMEL.findall(word)] if not word.isdigit() else [word]
        lowered = word.lower().strip("_")
        if lowered and lowered not in STOPWORDS and len(lowered) <= MAX_TERM_LEN:
            out.append(stem(lowered))
        if len(parts) > 1:
            for part in parts:
                p = part.lower()
                if len(p) > 1 and p not in STOPWORDS:
                    out.append(stem(p))
    return out


def query_terms(query: str) -> list[str]:
    """Distinct terms of a query, in first-seen order."""
    return list(dict.fromkeys(terms(query)))


class LexicalIndex:
    """BM25 postings of one index, under `<prefix>lx:*`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.len_key = f"{prefix}lx:len"
        self.stats_key = f"{prefix}lx:stats"

    def term_key(self, term: str) -> str:
        return f"{self.prefix}lx:t:{term}"

    def add(self, pipe: Any, element: str, text: str) -> tuple[list[str], int]:
        """Queue the postings of one chunk on `pipe`; returns its distinct terms and its length (both
        kept with the chunk, for removal)."""
        counts = Counter(terms(text))
        for term, tf in counts.items():
            pipe.hset(self.term_key(term), element, tf)
        length = sum(counts.values())
        pipe.hset(self.len_key, element, length)
        pipe.hincrby(self.stats_key, "docs", 1)
        pipe.hincrby(self.stats_key, "tokens", length)
        return list(counts), length

    def remove(self, pipe: Any, element: str, element_terms: list[str], length: int) -> None:
        for term in element_terms:
            pipe.hdel(self.term_key(term), element)
        pipe.hdel(self.len_key, element)
        pipe.hincrby(self.stats_key, "docs", -1)
        pipe.hincrby(self.stats_key, "tokens", -length)

    def search(self, redis: Any, query: str, limit: int) -> list[tuple[str, float]]:
        """(element, BM25 score) best first, at most `limit`."""
        qterms = query_terms(query)
        if not qterms:
            return []
        pipe = redis.pipeline(transaction=False)
        pipe.hmget(self.stats_key, ["docs", "tokens"])
        for term in qterms:
            pipe.hgetall(self.term_key(term))
        replies = pipe.execute()
        docs, tokens = (int(x or 0) for x in replies[0])
        if docs <= 0:
            return []
        avgdl = max(tokens / docs, 1.0)
        postings = [p for p in replies[1:] if p]
        candidates = {e for p in postings for e in p}
        if not candidates:
            return []
        cand = list(candidates)
        lengths = dict(zip(cand, redis.hmget(self.len_key, cand), strict=True))
        scores: dict[bytes, float] = dict.fromkeys(cand, 0.0)
        for p in postings:
            df = len(p)
            idf = math.log(1.0 + (docs - df + 0.5) / (df + 0.5))
            for element, tf_raw in p.items():
                tf = float(tf_raw)
                dl = float(lengths[element] or avgdl)
                scores[element] += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * dl / avgdl))
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [(e.decode(), s) for e, s in best]
