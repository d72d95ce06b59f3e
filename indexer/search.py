"""Hybrid retrieval: VSIM over the Vector Set (FILTER on attributes) fused with BM25 by reciprocal rank.

Plain lexical matching beats a small embedding model on code identifiers, the embedding model wins on
paraphrase; reciprocal-rank fusion (sum of w / (RRF_K + rank)) keeps whichever ranks a chunk higher.
RRF_K and the weights were tuned with bench/index_bench.py (docstring queries on `click`; the sweep is
in docs/benchmarks.md): a small K and the vector ranking counted twice gave the best MRR@10.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.index import Hit, Index

RRF_K = 10
VECTOR_WEIGHT = 2.0
LEXICAL_WEIGHT = 1.0
MODES = ("hybrid", "vector", "lexical")
WILDCARDS = re.compile(r"[*?\[]")


def search(ix: Index, query: str, k: int, path_glob: str | None, lang: str | None, mode: str) -> list[Hit]:
    from indexer.index import Hit

    if mode not in MODES:
        raise ValueError(f"search mode {mode!r}: choose one of {', '.join(MODES)}")
    if not query.strip() or k <= 0:
        return []
    matcher = glob_matcher(path_glob)
    depth = max(50, 5 * k)
    rankings: list[tuple[float, list[tuple[str, float]]]] = []
    if mode in ("hybrid", "vector"):
        rankings.append((VECTOR_WEIGHT, vector_ranking(ix, query, depth, path_glob, lang, matcher)))
    if mode in ("hybrid", "lexical"):
        rankings.append((LEXICAL_WEIGHT, lexical_ranking(ix, query, depth, lang, matcher)))
    if mode == "hybrid":
        ranked = fuse([r for _, r in rankings], [w for w, _ in rankings])[:k]
    else:
        ranked = rankings[0][1][:k]
    records = ix.store.chunk_records([e for e, _ in ranked])
    hits = []
    for (_, score), rec in zip(ranked, records, strict=True):
        if rec is None:  # removed between the ranking and this read
            continue
        hits.append(Hit(rec["path"], rec["start"], rec["end"], rec["symbol"], rec["lang"], float(score),
                        rec["text"], rec["hash"]))  # fmt: skip
    return hits


def fuse(rankings: list[list[tuple[str, float]]], weights: list[float]) -> list[tuple[str, float]]:
    """Reciprocal-rank fusion; ties broken by element name so results are deterministic."""
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, (element, _) in enumerate(ranking, start=1):
            scores[element] = scores.get(element, 0.0) + weight / (RRF_K + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def vector_ranking(
    ix: Index,
    query: str,
    depth: int,
    path_glob: str | None,
    lang: str | None,
    matcher: Callable[[str], bool] | None,
) -> list[tuple[str, float]]:
    vec = ix.encoder.encode([query])[0].astype("<f4").tobytes()
    expr = filter_expression(path_glob, lang)
    count = depth
    total = ix.redis.vset().vcard(ix.store.vset) if ix.redis.exists(ix.store.vset) else 0
    while True:
        args: list[Any] = ["VSIM", ix.store.vset, "FP32", vec, "WITHSCORES", "COUNT", count]
        if expr:
            args += ["FILTER", expr, "FILTER-EF", max(count * 100, 10_000)]
        # Raw command: redis-py's VSIM reply parser fails on an empty WITHSCORES reply.
        reply = ix.redis.execute_command(*args)
        ranked = sorted(_pairs(reply), key=lambda kv: (-kv[1], kv[0]))
        if matcher is not None:
            ranked = [(e, s) for e, s in ranked if matcher(element_path(e))]
        # A glob the FILTER could only narrow (e.g. "*.py") may need a deeper look to fill `depth`.
        if len(ranked) >= depth or count >= total or matcher is None:
            return ranked[:depth]
        count *= 4


def lexical_ranking(
    ix: Index, query: str, depth: int, lang: str | None, matcher: Callable[[str], bool] | None
) -> list[tuple[str, float]]:
    filtered = lang is not None or matcher is not None
    ranked = ix.store.lexical.search(ix.redis, query, limit=1_000_000 if filtered else depth)
    if matcher is not None:
        ranked = [(e, s) for e, s in ranked if matcher(element_path(e))]
    if lang is None:
        return ranked[:depth]
    out: list[tuple[str, float]] = []
    for start in range(0, len(ranked), 200):
        page = ranked[start : start + 200]
        raw = ix.redis.hmget(ix.store.chunks_key, [e for e, _ in page])
        out += [
            (e, s)
            for (e, s), r in zip(page, raw, strict=True)
            if r is not None and json.loads(r)["lang"] == lang
        ]
        if len(out) >= depth:
            break
    return out[:depth]


def element_path(element: str) -> str:
    return element.rsplit("#", 1)[0]


def filter_expression(path_glob: str | None, lang: str | None) -> str | None:
    """A VSIM FILTER for what the attributes can answer exactly: language, and the glob's literal
    directory prefix (the rest of the glob is checked on the results)."""
    parts = []
    if lang:
        parts.append(f".lang == {json.dumps(lang)}")
    if path_glob:
        glob = _normalize(path_glob)
        if not WILDCARDS.search(glob):
            parts.append(f"(.path == {json.dumps(glob)} or {json.dumps(glob)} in .dirs)")
        else:
            literal = glob[: WILDCARDS.search(glob).start()]  # type: ignore[union-attr]
            prefix = literal.rsplit("/", 1)[0] if "/" in literal else ""
            if prefix:
                parts.append(f"{json.dumps(prefix)} in .dirs")
    return " and ".join(parts) if parts else None


def glob_matcher(path_glob: str | None) -> Callable[[str], bool] | None:
    """A predicate on repo-relative paths. `**` spans directories, `*` and `?` do not; a glob without
    "/" matches file names anywhere ("*.py"); a plain path matches that file or everything under it."""
    if not path_glob:
        return None
    glob = _normalize(path_glob)
    if not WILDCARDS.search(glob):
        return lambda p: p == glob or p.startswith(glob + "/")
    regex = re.compile(_translate(glob))
    if "/" not in glob:
        return lambda p: bool(regex.fullmatch(p.rsplit("/", 1)[-1]))
    return lambda p: bool(regex.fullmatch(p))


def _normalize(glob: str) -> str:
    glob = glob.strip()
    while glob.startswith("./"):
        glob = glob[2:]
    return glob.rstrip("/")


def _translate(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and "]" in glob[i + 1 :]:
            end = glob.index("]", i + 1)
            body = glob[i + 1 : end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def _pairs(reply: Any) -> list[tuple[str, float]]:
    """VSIM WITHSCORES reply (a dict from redis-py's parser, or a flat list) -> [(element, score)]."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(_str(e), float(s)) for e, s in reply.items()]
    return [(_str(reply[i]), float(reply[i + 1])) for i in range(0, len(reply), 2)]


def _str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
