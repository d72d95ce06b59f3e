"""Full-text search over sessions: an inverted index in Redis, kept up to date per message, BM25.

A document is a session: its title (weighted) and every message. Keys (all under wb:s:fts:):
  t:<term>   zset  session id -> term frequency in that session (title occurrences weighted)
  d:<id>     set   the terms a session contributed (to remove them on delete)
  len        hash  session id -> document length in terms
  total      string  the sum of all document lengths
The BM25 corpus statistics (document count, average length) come from `len`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import redis

PREFIX = "wb:s:fts:"
LEN_KEY = PREFIX + "len"
TOTAL_KEY = PREFIX + "total"
TITLE_WEIGHT = 3
K1 = 1.2
B = 0.75
MAX_TERM_CHARS = 64

_WORD = re.compile(r"[^\W_]+(?:_+[^\W_]+)*|[^\W_]+", re.UNICODE)  # words, snake_case kept whole
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_]+", re.UNICODE)


def terms(text: str) -> list[str]:
    """Search terms of `text`: words lower-cased; identifiers also split into their parts.

    `parse_config_file` -> parse_config_file, parse, config, file;
    `HTTPServerError` -> httpservererror, http, server, error.
    """
    out: list[str] = []
    for match in _WORD.finditer(text):
        word = match.group()
        whole = word.lower()
        parts = [p.lower() for chunk in word.split("_") if chunk for p in _CAMEL.findall(chunk)]
        if len(whole) <= MAX_TERM_CHARS and (len(whole) > 1 or whole.isdigit()):
            out.append(whole)
        if len(parts) > 1:
            out.extend(p for p in parts if len(p) > 1 and p != whole)
    return out


def term_key(term: str) -> str:
    return f"{PREFIX}t:{term}"


def doc_key(session_id: str) -> str:
    return f"{PREFIX}d:{session_id}"


def add_text(pipe: redis.client.Pipeline, session_id: str, text: str, weight: int = 1) -> None:
    """Queue the index updates for one more piece of a session's text."""
    counts = Counter(terms(text))
    if not counts:
        return
    for term, count in counts.items():
        pipe.zincrby(term_key(term), count * weight, session_id)
    pipe.sadd(doc_key(session_id), *counts)
    pipe.hincrby(LEN_KEY, session_id, sum(counts.values()))
    pipe.incrby(TOTAL_KEY, sum(counts.values()))


def remove_text(pipe: redis.client.Pipeline, session_id: str, text: str, weight: int = 1) -> None:
    """Undo `add_text` for a text that is no longer part of the session (an old title)."""
    counts = Counter(terms(text))
    for term, count in counts.items():
        pipe.zincrby(term_key(term), -count * weight, session_id)
        pipe.zremrangebyscore(term_key(term), "-inf", 0)
    if counts:
        pipe.hincrby(LEN_KEY, session_id, -sum(counts.values()))
        pipe.incrby(TOTAL_KEY, -sum(counts.values()))


def remove_session(r: redis.Redis, session_id: str) -> None:
    """Drop a session from the index entirely."""
    session_terms = [t.decode() for t in r.smembers(doc_key(session_id))]
    length = int(r.hget(LEN_KEY, session_id) or 0)
    pipe = r.pipeline(transaction=False)
    pipe.incrby(TOTAL_KEY, -length)
    for term in session_terms:
        pipe.zrem(term_key(term), session_id)
    pipe.delete(doc_key(session_id))
    pipe.hdel(LEN_KEY, session_id)
    pipe.execute()


@dataclass
class Scored:
    session_id: str
    score: float
    matched: list[str]  # the query terms this session contains


def search(r: redis.Redis, query: str, limit: int = 20, allowed: set[str] | None = None) -> list[Scored]:
    """Sessions ranked by BM25 for `query`; `allowed` restricts to a set of ids (e.g. one repo)."""
    query_terms = list(dict.fromkeys(terms(query)))
    if not query_terms:
        return []
    pipe = r.pipeline(transaction=False)
    pipe.hlen(LEN_KEY)
    pipe.get(TOTAL_KEY)
    for term in query_terms:
        pipe.zrange(term_key(term), 0, -1, withscores=True)
    n_docs, total, *postings = pipe.execute()
    if not n_docs:
        return []
    tf: dict[str, dict[str, float]] = {}
    for term, posting in zip(query_terms, postings, strict=True):
        for member, freq in posting:
            sid = member.decode()
            if freq > 0 and (allowed is None or sid in allowed):
                tf.setdefault(sid, {})[term] = freq
    if not tf:
        return []
    ids = list(tf)
    lengths = dict(zip(ids, (float(x or 0) for x in r.hmget(LEN_KEY, ids)), strict=True))
    avg_len = max(float(total or 0) / n_docs, 1.0)
    pairs = zip(query_terms, postings, strict=True)
    df = {term: sum(1 for _, f in posting if f > 0) for term, posting in pairs}
    idf = {t: math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5)) for t in query_terms}
    results = []
    for sid, freqs in tf.items():
        norm = K1 * (1 - B + B * lengths[sid] / avg_len)
        score = sum(idf[t] * f * (K1 + 1) / (f + norm) for t, f in freqs.items())
        results.append(Scored(sid, score, [t for t in query_terms if t in freqs]))
    results.sort(key=lambda s: (-s.score, s.session_id))
    return results[:limit]


def snippet(text: str, matched: list[str], width: int = 160) -> str:
    """About `width` characters of `text` around the first place a matched term occurs."""
    flat = " ".join(text.split())
    lower = flat.lower()
    positions = [lower.find(t) for t in matched]
    hits = [p for p in positions if p >= 0]
    if not hits:
        return flat[:width] + ("…" if len(flat) > width else "")
    start = max(0, min(hits) - width // 3)
    end = min(len(flat), start + width)
    return ("…" if start else "") + flat[start:end] + ("…" if end < len(flat) else "")
