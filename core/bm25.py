"""The one term splitter and BM25 scorer, shared by session search and the code index's lexical signal.

Terms are words of any script, lower-cased; an identifier also gives its snake_case and camelCase parts
(`parse_config_file` -> parse_config_file, parse, config, file; `HTTPServerError` -> httpservererror,
http, server, error). A caller may add a stop list and a light suffix stemmer (the code index does:
"renders" finds `render`). Where the postings live (Redis hashes or sorted sets) is the caller's
business: `rank` scores postings already read, so both callers fetch theirs in one pipeline.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K1 = 1.2
B = 0.75
MAX_TERM_CHARS = 64

_WORD = re.compile(r"[^\W_]+(?:_+[^\W_]+)*", re.UNICODE)  # words; snake_case kept whole

Doc = TypeVar("Doc", bound=Hashable)


@functools.lru_cache(maxsize=1 << 16)
def word_terms(word: str) -> tuple[str, ...]:
    """The terms of one word: itself lower-cased, then its parts if it is an identifier (cached: text
    repeats its words, and splitting is the slow part)."""
    whole = word.lower()
    out = [whole] if len(whole) <= MAX_TERM_CHARS and (len(whole) > 1 or whole.isdigit()) else []
    if "_" not in word and word.isalpha() and (word.islower() or word.isupper()):
        return tuple(out)  # a plain word: nothing to split
    parts = [p.lower() for piece in word.split("_") if piece for p in camel_parts(piece)]
    if len(parts) > 1:
        out.extend(p for p in parts if len(p) > 1 and p != whole)
    return tuple(out)


def camel_parts(word: str) -> list[str]:
    """`parseHTTPResponse2` -> parse, HTTP, Response, 2 (any script's upper/lower case counts)."""
    parts, start = [], 0
    for i in range(1, len(word)):
        a, b = word[i - 1], word[i]
        acronym_end = a.isupper() and b.isupper() and i + 1 < len(word) and word[i + 1].islower()
        if (a.islower() and b.isupper()) or a.isdigit() != b.isdigit() or acronym_end:
            parts.append(word[start:i])
            start = i
    parts.append(word[start:])
    return parts


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


@dataclass(frozen=True)
class Splitter:
    """Text -> index terms, in order with repeats (term frequency counts them). The defaults keep every
    term as split; `stopwords` are dropped and `stemming` maps each term to its stem."""

    stopwords: frozenset[str] = frozenset()
    stemming: bool = False

    def terms(self, text: str) -> list[str]:
        out: list[str] = []
        for word in _WORD.findall(text):
            for term in word_terms(word):
                if term in self.stopwords:
                    continue
                out.append(stem(term) if self.stemming else term)
        return out

    def query_terms(self, query: str) -> list[str]:
        """Distinct terms of a query, in first-seen order."""
        return list(dict.fromkeys(self.terms(query)))


PLAIN = Splitter()


def terms(text: str) -> list[str]:
    """The plain splitter's terms of `text` (no stop list, no stemming)."""
    return PLAIN.terms(text)


def idf(docs: int, df: int) -> float:
    """BM25's inverse document frequency, never negative (the +1 keeps a very common term above 0)."""
    return math.log(1.0 + (docs - df + 0.5) / (df + 0.5))


@dataclass
class Ranked(Generic[Doc]):
    doc: Doc
    score: float
    matched: list[int] = field(default_factory=list)  # indices of the query terms the doc contains


def rank(
    postings: Sequence[Mapping[Doc, float]],
    lengths: Mapping[Doc, float],
    docs: int,
    avg_len: float,
    limit: int,
    allowed: Iterable[Doc] | None = None,
    k1: float = K1,
    b: float = B,
) -> list[Ranked[Doc]]:
    """The best `limit` documents for a query, best first (ties by document key, so results are
    deterministic). `postings[i]`: doc -> frequency of query term i; `lengths`: doc -> length in terms
    (a missing length counts as the average); `docs`/`avg_len`: the corpus; `allowed`: only these docs
    are scored (a term's document frequency still counts every doc)."""
    if docs <= 0 or limit < 1:
        return []
    avg = max(avg_len, 1.0)
    keep = set(allowed) if allowed is not None else None
    scores: dict[Doc, Ranked[Doc]] = {}
    for i, posting in enumerate(postings):
        if not posting:
            continue
        weight = idf(docs, len(posting))
        for doc, freq in posting.items():
            if keep is not None and doc not in keep:
                continue
            f = float(freq)
            dl = float(lengths.get(doc) or avg)
            entry = scores.get(doc)
            if entry is None:
                entry = scores[doc] = Ranked(doc, 0.0)
            entry.score += weight * f * (k1 + 1) / (f + k1 * (1 - b + b * dl / avg))
            entry.matched.append(i)
    return sorted(scores.values(), key=lambda r: (-r.score, r.doc))[:limit]  # type: ignore[operator]
