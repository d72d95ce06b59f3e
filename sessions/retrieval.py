"""RAG for a turn: search the repository's index and keep the best chunks within a token budget."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sessions.prompt import chunk_header

log = logging.getLogger("workbench.sessions")


@dataclass
class Retrieved:
    chunks: list[dict[str, Any]] = field(default_factory=list)  # as stored in Message.context
    ids: dict[int, list[int]] = field(default_factory=dict)  # position in chunks -> pre-tokenized ids
    tokens: int = 0
    skipped: str | None = None

    def chunk_ids(self, chunk: dict[str, Any]) -> list[int] | None:
        for i, c in enumerate(self.chunks):
            if c is chunk:
                return self.ids.get(i)
        return None


class Retriever:
    """Opens each repository's index once per process and answers queries against it."""

    def __init__(self) -> None:
        self._indexes: dict[str, Any] = {}
        self._tokenized: set[tuple[str, str]] = set()  # (repo, tokenizer identity) made into blobs
        self._busy = threading.Lock()  # one retrieval at a time, also one a cancelled turn left running

    def retrieve_cancellable(
        self, repo: str, query: str, tokenizer: Any, k: int, budget: int, cancel: threading.Event,
        progress: Any = None,
    ) -> Retrieved | None:  # fmt: skip
        """`retrieve` on a thread of its own; None as soon as `cancel` is set. Refreshing the index can
        wait minutes for another process's writer lease: a cancelled turn does not wait with it (the
        retrieval finishes in the background and its result is dropped)."""
        done: Future[Retrieved] = Future()

        def work() -> None:
            with self._busy:
                if cancel.is_set():
                    done.cancel()
                    return
                try:
                    done.set_result(self.retrieve(repo, query, tokenizer, k, budget, progress))
                except BaseException as exc:
                    done.set_exception(exc)

        threading.Thread(target=work, name="wb-retrieve", daemon=True).start()
        while not done.done():
            if cancel.wait(0.05):
                return None
        return None if done.cancelled() else done.result()

    def index_for(self, repo: str) -> Any:
        """The repository's index (opened once per process): what the agent's search_code searches.
        Its calls take turns with retrievals (the agent calls it from a thread of its own)."""
        with self._busy:
            return _Serialized(self._index(repo), self._busy)

    def _index(self, repo: str) -> Any:
        if repo not in self._indexes:
            # Imported here: sessions without RAG never load the indexer or the embedding model.
            from indexer import Index
            from indexer.index import shared_encoder

            self._indexes[repo] = Index.open(repo, encoder=shared_encoder())
        return self._indexes[repo]

    def _prepare(self, repo: str, index: Any, tokenizer: Any, progress: Any = None) -> None:
        """Bring the index up to date (hashes only, when nothing changed) and make sure every chunk
        has token ids for this model's tokenizer, once per process. `progress`: indexer.progress."""
        index.update(progress=progress)
        key = (repo, str(getattr(tokenizer, "identity", id(tokenizer))))
        if key not in self._tokenized:
            index.use_tokenizer(tokenizer)
            self._tokenized.add(key)

    def retrieve(
        self, repo: str, query: str, tokenizer: Any, k: int, budget: int, progress: Any = None
    ) -> Retrieved:
        """The top-`k` hits for `query` whose tokens (with their headers) fit in `budget`."""
        try:
            index = self._index(repo)
            if index.store.counts()[1] == 0:  # nothing indexed: do not load the embedding model for nothing
                return Retrieved(skipped=f"{repo} is not indexed (run `workbench index` there)")
            self._prepare(repo, index, tokenizer, progress)
            hits = index.search(query, k=k)
        except Exception as exc:  # no index yet, no embedding model, Redis trouble: answer without RAG
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("retrieval skipped for %s (%s)", repo, reason)
            return Retrieved(skipped=reason)
        out = Retrieved()
        for hit in hits:
            chunk = {
                "path": hit.path,
                "start_line": int(hit.start_line),
                "end_line": int(hit.end_line),
                "symbol": hit.symbol or None,
                "score": round(float(hit.score), 6),
                "text": hit.text,
            }
            try:
                ids = list(index.token_ids(hit, tokenizer))
            except Exception as exc:
                log.warning("no pre-tokenized ids for %s (%s); tokenizing its text", hit.path, exc)
                ids = tokenizer.encode(hit.text)
            cost = len(ids) + len(tokenizer.encode(chunk_header(chunk))) + 1
            if out.tokens + cost > budget:
                continue  # a smaller, lower-ranked chunk may still fit
            chunk["tokens"] = cost
            out.ids[len(out.chunks)] = ids
            out.chunks.append(chunk)
            out.tokens += cost
        return out


class _Serialized:
    """An index whose method calls hold `lock`: the embedding model and the index's Redis pipelines are
    used by one thread at a time."""

    def __init__(self, index: Any, lock: threading.Lock) -> None:
        self._index, self._lock = index, lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._index, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call
