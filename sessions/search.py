"""Full-text search over sessions: an inverted index in Redis, kept up to date per message, BM25.

A document is a session: its title (weighted) and every message. Keys (all under wb:{s}:fts:, in the
session catalogue's slot, core.keys):
  t:<term>   zset  session id -> term frequency in that session (title occurrences weighted)
  d:<id>     set   the terms a session contributed (to remove them on delete)
  len        hash  session id -> document length in terms
  total      string  the sum of all document lengths
The BM25 corpus statistics (document count, average length) come from `len` and `total`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import redis

from core import bm25, keys

PREFIX = keys.SESSIONS + "fts:"
LEN_KEY = PREFIX + "len"
TOTAL_KEY = PREFIX + "total"
TITLE_WEIGHT = 3


def terms(text: str) -> list[str]:
    """Search terms of `text` (core.bm25's plain splitter): words lower-cased; identifiers also split
    into their parts.

    `parse_config_file` -> parse_config_file, parse, config, file;
    `HTTPServerError` -> httpservererror, http, server, error.
    """
    return bm25.terms(text)


def term_key(term: str) -> str:
    return f"{PREFIX}t:{term}"


def doc_key(session_id: str) -> str:
    return f"{PREFIX}d:{session_id}"


# Index updates run as Lua on the server: one command per text (or per session, on a rebuild) instead
# of one per term, with the term/count pairs packed into one string ("term count term count ...";
# terms never hold spaces) so the client does not pay per argument either. KEYS[1]: the `len` hash (it
# names the slot: every key the script builds from the prefix is in it). ARGV: session id, key
# prefix, the length change, the packed pairs. A negative change removes text (a renamed title),
# dropping a term whose frequency reaches zero.
_ADD = """
local sid, p, len = ARGV[1], ARGV[2], tonumber(ARGV[3])
local added = {}
for term, c in string.gmatch(ARGV[4], '(%S+) (%S+)') do
  local score = tonumber(redis.call('ZINCRBY', p .. 't:' .. term, c, sid))
  if score <= 0 then
    redis.call('ZREM', p .. 't:' .. term, sid)
  elseif tonumber(c) > 0 then
    added[#added + 1] = term
  end
  if #added == 1000 then
    redis.call('SADD', p .. 'd:' .. sid, unpack(added))
    added = {}
  end
end
if #added > 0 then redis.call('SADD', p .. 'd:' .. sid, unpack(added)) end
redis.call('HINCRBY', p .. 'len', sid, len)
redis.call('INCRBY', p .. 'total', len)
return len
"""
_REMOVE = """
local sid, p = ARGV[1], ARGV[2]
for _, term in ipairs(redis.call('SMEMBERS', p .. 'd:' .. sid)) do
  redis.call('ZREM', p .. 't:' .. term, sid)
end
local len = tonumber(redis.call('HGET', p .. 'len', sid) or '0')
redis.call('INCRBY', p .. 'total', -len)
redis.call('DEL', p .. 'd:' .. sid)
redis.call('HDEL', p .. 'len', sid)
return len
"""


def add_counts(pipe: redis.client.Pipeline, session_id: str, tf: Counter, length: int) -> None:
    """Queue adding term frequencies `tf` (weights applied) and `length` terms to a session."""
    if tf:
        packed = " ".join(f"{term} {count}" for term, count in tf.items())
        # EVAL through execute_command: redis-py's cluster pipeline has no eval()
        pipe.execute_command("EVAL", _ADD, 1, LEN_KEY, session_id, PREFIX, length, packed)


def add_text(pipe: redis.client.Pipeline, session_id: str, text: str, weight: int = 1) -> None:
    """Queue the index update for one more piece of a session's text."""
    counts = Counter(terms(text))
    add_counts(pipe, session_id, Counter({t: c * weight for t, c in counts.items()}), counts.total())


def remove_text(pipe: redis.client.Pipeline, session_id: str, text: str, weight: int = 1) -> None:
    """Undo `add_text` for a text that is no longer part of the session (an old title)."""
    counts = Counter(terms(text))
    add_counts(pipe, session_id, Counter({t: -c * weight for t, c in counts.items()}), -counts.total())


def session_counts(title: str, texts: list[str]) -> tuple[Counter, int]:
    """Term frequencies (title weighted) and length of a whole session, for one `add_counts`."""
    title_terms = Counter(terms(title))
    tf = Counter({t: c * TITLE_WEIGHT for t, c in title_terms.items()})
    length = title_terms.total()
    for text in texts:
        counts = Counter(terms(text))
        tf.update(counts)
        length += counts.total()
    return tf, length


def remove_session(pipe: redis.client.Pipeline | redis.Redis, session_id: str) -> None:
    """Queue dropping a session from the index entirely."""
    pipe.execute_command("EVAL", _REMOVE, 1, LEN_KEY, session_id, PREFIX)


@dataclass
class Scored:
    session_id: str
    score: float
    matched: list[str]  # the query terms this session contains


def search(r: redis.Redis, query: str, limit: int = 20, only_in: str | None = None) -> list[Scored]:
    """Sessions ranked by BM25 for `query`, best first; `only_in`: a zset key of allowed ids (a repo's).

    Two pipelined round trips: the corpus totals and each query term's postings, then the lengths
    (and repo membership) of the sessions those postings name; core.bm25 scores them here."""
    query_terms = bm25.PLAIN.query_terms(query)
    if not query_terms or limit < 1:
        return []
    pipe = r.pipeline(transaction=False)
    pipe.hlen(LEN_KEY)
    pipe.get(TOTAL_KEY)
    for term in query_terms:
        pipe.zrange(term_key(term), 0, -1, withscores=True)
    docs, total, *raw = pipe.execute()
    postings = [dict(p) for p in raw]
    candidates = list({sid for p in postings for sid in p})
    if not docs or not candidates:
        return []
    pipe = r.pipeline(transaction=False)
    pipe.hmget(LEN_KEY, candidates)
    if only_in:
        pipe.zmscore(only_in, candidates)
    lengths_raw, *member = pipe.execute()
    lengths = {sid: float(n or 0) for sid, n in zip(candidates, lengths_raw, strict=True)}
    allowed = None
    if only_in:
        allowed = [sid for sid, score in zip(candidates, member[0], strict=True) if score is not None]
    ranked = bm25.rank(postings, lengths, int(docs), int(total or 0) / int(docs), limit, allowed)
    return [Scored(x.doc.decode(), x.score, [query_terms[i] for i in x.matched]) for x in ranked]


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
