"""Prefill once: a sequence's KV cache cut into content-addressed token blocks, kept in tiers.

Block i of a history is keyed by a chain hash over (model identity, storage dtype, block format version,
key of block i-1, the block's token ids), so equal prefixes share blocks whatever session, fork or process
made them, and a different model or dtype never sees them. Only complete blocks are stored as blocks; the
rest of a saved history (0..block_size-1 tokens) plus the logits of its last position go in one *tail*
record keyed by the chain hash of the whole history, so a fully cached history needs no recompute at all.

Reads take each block from the fastest tier that has a valid copy (and promote it to faster tiers);
writes run on a background thread. A restore either extends the cache by a verified run of blocks or
leaves it exactly as it was.

A restored block is not copied into the cache: the cache appends it as a page (`append_block`) over the
memory it arrived in, the block file mapped read-only (tiers/mapped.py), the bytes Redis sent, the
memory tier's bytes. While a cache holds it, a verified block is also shared with every other restore of
this store in the process (another session, a fork, the TUI switching back) without being read again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kvstore.format import DTYPES, KIND_BLOCK, KIND_TAIL, BlockFormatError, decode_block
from kvstore.keys import chain_keys, storage_dtype, tail_key
from kvstore.live import LiveBlock, LiveBlocks
from kvstore.space import BlockSpace
from kvstore.writer import BlockWriter, EncodeJob, RawJob

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 64  # chosen by bench/kv_bench.py --block-sizes; see docs/benchmarks.md "KV blocks"
_LOOKAHEAD = 3  # blocks fetched and verified ahead of the one being loaded into the cache


class BlockTier(Protocol):
    name: str  # "memory" | "disk" | "redis"

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, data: bytes) -> None: ...
    def contains(self, keys: list[str]) -> list[bool]: ...
    def delete(self, keys: list[str]) -> int: ...
    def scan(self) -> list[tuple[str, float]]: ...  # (key, idle seconds) of every block, for gc
    def stats(self) -> dict: ...  # blocks, bytes
    def clear(self) -> None: ...


class StatsSink(Protocol):
    """Where hit/miss counters go besides this process (the Redis tier shares them between processes)."""

    def incr(self, counts: dict[str, int]) -> None: ...
    def read(self) -> dict[str, int]: ...
    def reset(self) -> None: ...


class Refs(Protocol):
    """Pins: which keys each holder (a session, for Workbench) still needs; gc keeps every pinned key."""

    def set(self, holder: str, keys: list[str]) -> None: ...
    def remove(self, holder: str) -> bool: ...
    def pinned(self) -> set[str]: ...
    def holders(self) -> list[str]: ...


@dataclass
class RestoreResult:
    cached_tokens: int = 0  # positions added to the cache
    by_tier: dict[str, int] = field(default_factory=dict)  # tokens taken from each tier
    bytes_read: int = 0
    restore_s: float = 0.0
    last_logits: np.ndarray | None = None  # set when the cache now holds all of token_ids
    blocks: int = 0  # block and tail records loaded
    dropped: int = 0  # corrupt or mismatched copies deleted on the way


class BlockStore:
    """Content-addressed KV blocks over ordered tiers (fastest first). Thread-safe."""

    def __init__(
        self,
        tiers: list[BlockTier],
        block_size: int = DEFAULT_BLOCK_SIZE,
        dtype: str | None = None,
        refs: Refs | None = None,
        stats_sink: StatsSink | None = None,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"KV block dtype {dtype!r} is not one of {sorted(DTYPES)}")
        self.tiers = list(tiers)
        self.block_size = block_size
        self.dtype = dtype
        self.refs = refs
        self.stats_sink = stats_sink
        self.counters: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._writer = BlockWriter(self._count)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kv-read")
        self._live = LiveBlocks()

    # -- restore ---------------------------------------------------------------------------------
    def restore(
        self, space: BlockSpace, cache: Any, token_ids: list[int], history_len: int | None = None
    ) -> RestoreResult:
        """Extend `cache` (holding token_ids[:cache.offset], block-aligned) by the longest cached run.

        `history_len`: the length of a history saved earlier that `token_ids` extends (a session's
        previous turn); its tail record is then found too, though it does not end on a block boundary.
        """
        t0 = time.perf_counter()
        res = RestoreResult()
        start = cache.offset
        if start % self.block_size or start > len(token_ids):
            return res
        dtype = storage_dtype(space, self.dtype)
        keys = chain_keys(space.identity, dtype, token_ids, self.block_size)
        first = start // self.block_size
        try:
            self._load_blocks(space, cache, keys, first, token_ids, res)
            pos, total = cache.offset, len(token_ids)
            parent = keys[pos // self.block_size - 1] if pos >= self.block_size else None
            for end in sorted({total, history_len or 0}, reverse=True):
                # A tail fits when the history ending at `end` has exactly the blocks restored so far;
                # an empty tail is only worth reading for its logits.
                if end > total or end // self.block_size * self.block_size != pos or (end == pos < total):
                    continue
                tkey = tail_key(space.identity, dtype, parent, token_ids[pos:end])
                if self._load_tail(space, cache, tkey, token_ids[pos:end], end == total, res):
                    break
        except Exception as exc:  # e.g. a cache that rejects the arrays: all or nothing
            log.warning("KV restore failed (%s: %s); the cache is left as it was", type(exc).__name__, exc)
            cache.trim(start)
            res = RestoreResult(dropped=res.dropped)
            self._count({"restore_failures": 1})
        res.restore_s = time.perf_counter() - t0
        lookup = len(token_ids) - start
        counts = {"restores": 1, "lookup_tokens": lookup, "hit_tokens": res.cached_tokens,
                  "bytes_read": res.bytes_read, "dropped_blocks": res.dropped}  # fmt: skip
        counts.update({f"hit_tokens_{t}": n for t, n in res.by_tier.items()})
        self._count(counts)
        return res

    def _presence(self, keys: list[str]) -> list[list[bool]]:
        out = []
        for tier in self.tiers:
            try:
                out.append(tier.contains(keys))
            except Exception as exc:
                log.warning("KV tier %s unavailable for lookup (%s); skipping it", tier.name, exc)
                out.append([False] * len(keys))
        return out

    def _fetch(
        self, space: BlockSpace, key: str, kind: int, tiers: list[int]
    ) -> tuple[tuple[int, LiveBlock] | None, int]:
        """The first valid copy of `key` among `tiers` (indices) as ((tier index, block) | None, number
        of bad copies deleted on the way). A tier that can map its blocks (disk) gives them mapped."""
        dropped = 0
        for ti in tiers:
            tier = self.tiers[ti]
            mapped = getattr(tier, "get_mapped", None)
            try:
                data = mapped(key) if mapped is not None else tier.get(key)
            except Exception as exc:
                log.warning("KV tier %s failed reading block %s (%s)", tier.name, key[:16], exc)
                continue
            if data is None:
                continue
            try:
                if isinstance(data, BlockFormatError):
                    raise data
                if mapped is not None:
                    block, nbytes = data.verified(bytes.fromhex(key), space, kind), data.size
                else:
                    block, nbytes = decode_block(data, bytes.fromhex(key), space, kind), len(data)
            except BlockFormatError as exc:
                log.warning(
                    "KV block %s in tier %s dropped (%s); it will be recomputed", key[:16], tier.name, exc
                )
                dropped += 1
                try:
                    tier.delete([key])
                except Exception as del_exc:
                    log.warning("could not delete bad block %s from %s: %s", key[:16], tier.name, del_exc)
                continue
            if mapped is None:  # a mapped file is not copied to memory: the page cache holds it
                self._promote(key, data, ti)
            return (ti, self._live.add(key, LiveBlock(block, data, nbytes))), dropped
        return None, dropped

    def _fetch_or_share(self, space: BlockSpace, key: str, kind: int, tiers: list[int]) -> tuple:
        live = self._live.get(key)
        if live is not None:
            return (-1, live), 0
        return self._fetch(space, key, kind, tiers)

    def _load_blocks(
        self,
        space: BlockSpace,
        cache: Any,
        keys: list[str],
        first: int,
        token_ids: list[int],
        res: RestoreResult,
    ) -> None:
        presence = self._presence(keys[first:])
        run: list[tuple[str, list[int]]] = []
        for i, key in enumerate(keys[first:]):
            holders = [ti for ti in range(len(self.tiers)) if presence[ti][i]]
            if not holders and self._live.get(key) is None:
                break
            run.append((key, holders))
        base = cache.offset
        for i, (got, dropped) in enumerate(self._prefetched(space, run)):
            res.dropped += dropped
            if got is None:  # every copy of this block was bad: the run ends here
                break
            ti, block = got
            at = base + i * self.block_size
            cache.append_block(block.k, block.v, token_ids[at : at + self.block_size], block)
            self._account(res, ti, block.nbytes, block.n_tokens)

    def _prefetched(self, space: BlockSpace, run: list[tuple[str, list[int]]]) -> Iterator[tuple]:
        """Fetch and verify blocks on reader threads, a few ahead of the caller, in order."""
        # Futures leave the deque as their blocks are handed out: a finished future holds its block, and
        # keeping them all to the end would hold every block of a failed restore until it returns.
        pending: deque[Future] = deque()
        try:
            for i in range(len(run) + _LOOKAHEAD):
                if i < len(run):
                    key, holders = run[i]
                    job = (self._fetch_or_share, space, key, KIND_BLOCK, holders)
                    pending.append(self._readers.submit(*job))
                if i >= _LOOKAHEAD:
                    yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            wait(pending)

    def _load_tail(
        self, space: BlockSpace, cache: Any, key: str, tokens: list[int], last: bool, res: RestoreResult
    ) -> bool:
        got, dropped = self._fetch_or_share(space, key, KIND_TAIL, list(range(len(self.tiers))))
        res.dropped += dropped
        if got is None:
            return False
        ti, block = got
        if block.n_tokens:
            cache.append_block(block.k, block.v, tokens, block)
        self._account(res, ti, block.nbytes, block.n_tokens)
        if last and block.logits is not None:
            res.last_logits = np.array(block.logits, dtype=np.float32)
        return True

    def _account(self, res: RestoreResult, ti: int, nbytes: int, n_tokens: int) -> None:
        name = self.tiers[ti].name if ti >= 0 else "memory"  # -1: shared with a cache of this process
        res.cached_tokens += n_tokens
        res.by_tier[name] = res.by_tier.get(name, 0) + n_tokens
        res.bytes_read += nbytes
        res.blocks += 1

    def _promote(self, key: str, data: bytes, ti: int) -> None:
        """A block read from a slower tier goes to every faster one (memory at once, others queued)."""
        if ti == 0:
            return
        faster = self.tiers[:ti]
        if faster[0].name == "memory":
            faster[0].put(key, data)
            faster = faster[1:]
        if faster:
            self._writer.enqueue(RawJob(key, data, [t for t in faster if self._writer.claim(t.name, key)]))

    # -- save ------------------------------------------------------------------------------------
    def save(
        self, space: BlockSpace, cache: Any, token_ids: list[int], last_logits: np.ndarray | None = None
    ) -> None:
        """Queue the blocks of `token_ids` (held by `cache`) that some tier lacks, plus the tail record.

        Runs the KV export (a copy) on the caller's thread; encoding and writing happen on the writer.
        `last_logits` are the logits of the last position of `token_ids`.
        """
        n = min(len(token_ids), cache.offset)
        if n < len(token_ids):
            last_logits = None  # logits of a position the cache does not hold
        dtype, identity = storage_dtype(space, self.dtype), space.identity
        keys = chain_keys(identity, dtype, token_ids[:n], self.block_size)
        tkey = tail_key(
            identity, dtype, keys[-1] if keys else None, token_ids[len(keys) * self.block_size : n]
        )
        with_tail = n > len(keys) * self.block_size or last_logits is not None
        records = [
            (key, KIND_BLOCK, i * self.block_size, (i + 1) * self.block_size) for i, key in enumerate(keys)
        ]
        if with_tail:
            records.append((tkey, KIND_TAIL, len(keys) * self.block_size, n))
        presence = self._presence([r[0] for r in records])
        for i, (key, kind, start, end) in enumerate(records):
            missing = [t for ti, t in enumerate(self.tiers) if not presence[ti][i]]
            targets = [t for t in missing if self._writer.claim(t.name, key)]
            if targets:
                k, v = cache.export(start, end)
                logits = last_logits if kind == KIND_TAIL else None
                self._writer.enqueue(EncodeJob(key, kind, identity, dtype, k, v, logits, targets))

    def flush(self) -> None:
        """Wait until every queued write has reached its tiers."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self._readers.shutdown(wait=True)

    # -- references, gc, stats -------------------------------------------------------------------
    def session_keys(self, space: BlockSpace, token_ids: list[int]) -> list[str]:
        """Every key a saved history occupies: its complete blocks and its tail record."""
        dtype = storage_dtype(space, self.dtype)
        keys = chain_keys(space.identity, dtype, token_ids, self.block_size)
        pos = len(keys) * self.block_size
        return [*keys, tail_key(space.identity, dtype, keys[-1] if keys else None, token_ids[pos:])]

    def pin(self, holder: str, space: BlockSpace, token_ids: list[int]) -> None:
        """Record that `holder` (any name: Workbench uses session ids) needs the history `token_ids`,
        replacing what it pinned before."""
        if self.refs is None:
            raise RuntimeError("this BlockStore was made without refs; pass refs= to pin histories")
        self.refs.set(holder, self.session_keys(space, token_ids))

    def unpin(self, holder: str) -> bool:
        return self.refs.remove(holder) if self.refs is not None else False

    def gc(self, grace_s: float = 300.0) -> dict[str, int]:
        """Delete blocks that no pin names and that were idle >= grace_s, in every tier.

        The grace period protects blocks a running session has written but not yet pinned.
        """
        self.flush()
        pinned = self.refs.pinned() if self.refs is not None else set()
        removed: dict[str, int] = {}
        for tier in self.tiers:
            victims = [k for k, idle in tier.scan() if k not in pinned and idle >= grace_s]
            removed[tier.name] = tier.delete(victims) if victims else 0
        return removed

    def clear(self) -> dict[str, int]:
        """Delete every block in every tier and reset the counters; returns the blocks each tier held."""
        self.flush()
        removed: dict[str, int] = {}
        for tier in self.tiers:
            removed[tier.name] = tier.stats()["blocks"]
            tier.clear()
        with self._count_lock:
            self.counters.clear()
        if self.stats_sink is not None:
            self.stats_sink.reset()
        return removed

    def stats(self) -> dict:
        """Blocks and bytes per tier, pinned holders, and hit counters: those every process shares
        (the stats sink's) when there is a sink, else this process's."""
        if self.stats_sink is not None:
            counters = self.stats_sink.read()
        else:
            with self._count_lock:
                counters = dict(self.counters)
        lookups = counters.get("lookup_tokens", 0)
        return {
            "block_size": self.block_size,
            "tiers": {t.name: t.stats() for t in self.tiers},
            "pinned_sessions": len(self.refs.holders()) if self.refs is not None else 0,
            "hit_rate": counters.get("hit_tokens", 0) / lookups if lookups else None,
            "counters": counters,
        }

    def _count(self, counts: dict[str, int]) -> None:
        counts = {k: v for k, v in counts.items() if v}
        if not counts:
            return
        with self._count_lock:
            for k, v in counts.items():
                self.counters[k] = self.counters.get(k, 0) + v
        if self.stats_sink is not None:
            try:
                self.stats_sink.incr(counts)
            except Exception as exc:
                log.warning("KV stats not recorded (%s)", exc)
