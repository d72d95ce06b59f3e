"""Hash tags: which Redis keys share a Cluster slot, so every multi-key operation stays in one.

Redis Cluster hashes only the part of a key between its first `{` and the next `}` when there is one, so
keys with the same tag live in one slot (on one node) and one MULTI or Lua script may touch them all. A
plain Redis ignores the braces. The layout:
  wb:{s}:*          the session catalogue: every session's hash, log and lease, the listing zsets and the
                    session full-text index. One slot, because one message's write updates its session
                    and the catalogue-wide listing and full-text index in one MULTI.
  wb:ix:{<id>}:*    one code index: its Vector Set, chunk and file hashes, BM25 postings, status and lease
                    (one file's update is one MULTI over them). Different indexes land in different slots.
  wb:kv:<hex>       KV blocks: no tag, each block its own key, so blocks spread over every slot and node.
  wb:srv:{wbq}:*    the serve stream protocol: the request stream, reply streams and records (one MULTI
                    ends a request: result, ack, delete).
Keys outside these (wb:tok:*, wb:kvstat:counters) are single-key reads and writes.
"""

from __future__ import annotations

SESSIONS = "wb:{s}:"


def index_prefix(index_id: str) -> str:
    return f"wb:ix:{{{index_id}}}:"
