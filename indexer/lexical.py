"""The lexical signal: BM25 over chunk text, symbol and path, with postings kept in Redis.

Terms come from core.bm25's splitter with a stop list and its light stemmer: words and identifiers,
lowercased; an identifier also contributes its camelCase/snake_case parts (`parseHTTPHeader` ->
parsehttpheader, parse, http, header), and "renders" finds `render`. Postings live in one hash per term
(`lx:t:<term>`: element -> term frequency), document lengths in `lx:len`, and corpus totals in
`lx:stats`, so adding or removing a chunk touches only its own terms: updates are incremental.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from core import bm25

STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "if", "in", "into", "is",
    "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "will", "with", "which",
    "when", "then", "than", "there", "these", "those", "been", "not", "no", "do", "does", "given",
})  # fmt: skip
SPLITTER = bm25.Splitter(stopwords=STOPWORDS, stemming=True)


def terms(text: str) -> list[str]:
    """All index terms of `text`, in order, with repeats (term frequency counts them)."""
    return SPLITTER.terms(text)


def query_terms(query: str) -> list[str]:
    """Distinct terms of a query, in first-seen order."""
    return SPLITTER.query_terms(query)


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
        postings = replies[1:]
        candidates = list({e for p in postings for e in p})
        if not candidates:
            return []
        raw_lengths = redis.hmget(self.len_key, candidates)
        lengths = {e: float(n or 0) for e, n in zip(candidates, raw_lengths, strict=True)}
        ranked = bm25.rank(postings, lengths, docs, tokens / docs, limit)
        return [(r.doc.decode(), r.score) for r in ranked]
