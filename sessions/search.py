"""Full-text search over sessions: an inverted index in Redis, kept up to date per message, BM25.

A document is a session: its title (weighted) and every message. Keys (all under wb:s:fts:):
  t:<term>   zset  session id -> term frequency in that session (title occurrences weighted)
  d:<id>     set   the terms a session contributed (to remove them on delete)
  len        hash  session id -> document length in terms
  total      string  the sum of all document lengths
The BM25 corpus statistics (document count, average length) come from `len` and `total`.
"""

from __future__ import annotations

import functools
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


def terms(text: str) -> list[str]:
    """Search terms of `text`: words lower-cased; identifiers also split into their parts.

    `parse_config_file` -> parse_config_file, parse, config, file;
    `HTTPServerError` -> httpservererror, http, server, error.
    """
    out: list[str] = []
    for word in _WORD.findall(text):
        out.extend(_word_terms(word))
    return out


@functools.lru_cache(maxsize=1 << 16)
def _word_terms(word: str) -> tuple[str, ...]:
    """The terms of one word (cached: text repeats its words, and splitting is the slow part)."""
    whole = word.lower()
    out = [whole] if len(whole) <= MAX_TERM_CHARS and (len(whole) > 1 or whole.isdigit()) else []
    if "_" not in word and word.isalpha() and (word.islower() or word.isupper()):
        return tuple(out)  # a plain word: nothing to split
    parts = [p.lower() for chunk in word.split("_") if chunk for p in _camel_parts(chunk)]
    if len(parts) > 1:
        out.extend(p for p in parts if len(p) > 1 and p != whole)
    return tuple(out)


def _camel_parts(word: str) -> list[str]:
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


def term_key(term: str) -> str:
    return f"{PREFIX}t:{term}"


def doc_key(session_id: str) -> str:
    return f"{PREFIX}d:{session_id}"


# Index updates run as Lua on the server: one command per text (or per session, on a rebuild) instead
# of one per term, with the term/count pairs packed into one string ("term count term count ...";
# terms never hold spaces) so the client does not pay per argument either. ARGV: session id, key
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
        pipe.eval(_ADD, 0, session_id, PREFIX, length, packed)


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
    pipe.eval(_REMOVE, 0, session_id, PREFIX)


@dataclass
class Scored:
    session_id: str
    score: float
    matched: list[str]  # the query terms this session contains


# BM25 runs where the postings are: the script reads each query term's posting list, scores every
# session in it and returns only the best `limit` — thousands of postings never cross the socket.
# ARGV: prefix, limit, k1, b, filter zset key ('' for none), then the query terms.
_BM25 = """
local p, limit, k1, b, only = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local n = redis.call('HLEN', p .. 'len')
if n == 0 then return {} end
local avg = math.max(tonumber(redis.call('GET', p .. 'total') or '0') / n, 1)
local scores, matched, norms, allowed = {}, {}, {}, {}
for i = 6, #ARGV do
  local post = redis.call('ZRANGE', p .. 't:' .. ARGV[i], 0, -1, 'WITHSCORES')
  local df = #post / 2
  local idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
  for j = 1, #post, 2 do
    local sid = post[j]
    if allowed[sid] == nil then
      allowed[sid] = only == '' or redis.call('ZSCORE', only, sid) ~= false
    end
    if allowed[sid] then
      local norm = norms[sid]
      if norm == nil then
        local dl = tonumber(redis.call('HGET', p .. 'len', sid) or '0')
        norm = k1 * (1 - b + b * dl / avg)
        norms[sid] = norm
      end
      local f = tonumber(post[j + 1])
      scores[sid] = (scores[sid] or 0) + idf * f * (k1 + 1) / (f + norm)
      matched[sid] = (matched[sid] or '') .. (i - 6) .. ','
    end
  end
end
local ranked = {}
for sid, score in pairs(scores) do ranked[#ranked + 1] = {sid, score} end
table.sort(ranked, function(x, y) if x[2] ~= y[2] then return x[2] > y[2] end return x[1] < y[1] end)
local out = {}
for i = 1, math.min(limit, #ranked) do
  local sid = ranked[i][1]
  out[#out + 1] = sid
  out[#out + 1] = string.format('%.17g', ranked[i][2])
  out[#out + 1] = matched[sid]
end
return out
"""


def search(r: redis.Redis, query: str, limit: int = 20, only_in: str | None = None) -> list[Scored]:
    """Sessions ranked by BM25 for `query`, best first; `only_in`: a zset key of allowed ids (a repo's)."""
    query_terms = list(dict.fromkeys(terms(query)))
    if not query_terms or limit < 1:
        return []
    reply = r.eval(_BM25, 0, PREFIX, limit, K1, B, only_in or "", *query_terms)
    results = []
    for i in range(0, len(reply), 3):
        indices = {int(x) for x in reply[i + 2].decode().split(",") if x}
        matched = [t for n, t in enumerate(query_terms) if n in indices]
        results.append(Scored(reply[i].decode(), float(reply[i + 1]), matched))
    return results


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
