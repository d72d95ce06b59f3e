"""Stateless completions for the HTTP front door, on one engine thread, with prefix KV reuse.

An OpenAI request carries its whole conversation, so there is no session to resume: the prompt's
content-addressed KV blocks are what carries over. Every request restores the longest cached prefix
(a shared system prompt, the earlier turns of a chat an editor resends) and saves its own blocks.
Nothing is written to the session store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serve.pins import DEFAULT_KEEP, RecentPins
from sessions.engine_thread import EngineThread, Job

log = logging.getLogger(__name__)


@dataclass
class CompletionJob:
    model: str  # a served model name
    build_ids: Callable[[Any], list[int]]  # tokenizer -> prompt ids (chat template or plain text)
    sampling: dict[str, Any]  # engine.SamplingParams fields
    emit: Callable[[Any], None]  # on the engine thread: each engine.Delta, then a Finished or an Exception
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Finished:
    text: str
    finish_reason: str  # OpenAI's: stop | length
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


class Completer:
    """Serves `models` (names as clients give them: a hub id or a directory)."""

    def __init__(
        self,
        models: list[str],
        backend: str | None = None,
        blocks: Any = "open",
        pin_recent: int = DEFAULT_KEEP,
    ) -> None:
        if not models:
            raise ValueError("Completer needs at least one model to serve")
        self.models = list(models)
        self.backend = backend
        self._engine = EngineThread()
        self._blocks = blocks  # "open": the Workbench block store, opened on the engine thread
        self._blocks_failed = False
        self._pin_recent = pin_recent
        self.pins: RecentPins | None = None  # the blocks of the latest conversations (serve/pins.py)

    def submit(self, job: CompletionJob) -> None:
        def dropped() -> None:
            job.emit(RuntimeError("the request was dropped before it ran"))

        self._engine.submit(Job(lambda: self._run(job), dropped))

    def preload(self) -> None:
        """Load every served model now (on the engine thread), so the first request does not pay it."""
        done = threading.Event()
        failed: list[Exception] = []

        def load() -> None:
            try:
                for name in self.models:
                    self._engine.model(name, self.backend)
            except Exception as exc:  # raised on the caller's thread: a bad --serve-model stops the server
                failed.append(exc)
            finally:
                done.set()

        self._engine.submit(Job(load, done.set))
        done.wait()
        if failed:
            raise failed[0]

    def close(self) -> None:
        self._engine.close(timeout=30)
        if self._blocks not in (None, "open"):
            self._blocks.close()

    def _block_store(self) -> Any:
        if self._blocks == "open" and not self._blocks_failed:
            from kvstore.open import open_block_store

            try:
                self._blocks = open_block_store()
            except Exception as exc:  # serving without KV reuse beats not serving
                log.warning("KV block store unavailable, no prefix reuse: %s", exc)
                self._blocks, self._blocks_failed = None, True
        if self._blocks not in (None, "open") and self.pins is None:
            self.pins = RecentPins(self._blocks, self._pin_recent)
        return None if self._blocks == "open" else self._blocks

    def _run(self, job: CompletionJob) -> None:
        try:
            job.emit(self._complete(job))
        except Exception as exc:
            job.emit(exc)

    def _complete(self, job: CompletionJob) -> Finished:
        import engine
        from engine.errors import ContextLengthError
        from kvstore import space_of

        model = self._engine.model(job.model, self.backend)
        ids = job.build_ids(model.tokenizer)
        room = model.context_length - len(ids)
        if room < 1:
            raise ContextLengthError(
                f"the prompt is {len(ids)} tokens; {job.model} takes {model.context_length}"
            )
        sampling = {**job.sampling, "max_tokens": min(job.sampling["max_tokens"], room)}
        params = engine.SamplingParams(**sampling)
        cache = model.make_cache()
        blocks = self._block_store()
        restored = blocks.restore(space_of(model), cache, ids) if blocks is not None else None
        result = None
        for ev in engine.generate(
            model, ids, params, cache=cache, last_logits=restored.last_logits if restored else None,
            cancel=job.cancel,
        ):  # fmt: skip
            if isinstance(ev, engine.GenerationResult):
                result = ev
            elif ev.text:
                job.emit(ev)
        assert result is not None  # generate always ends with its GenerationResult
        if blocks is not None and result.finish_reason != "cancelled":
            history = (ids + result.token_ids)[: cache.offset]
            blocks.save(space_of(model), cache, history)
            if self.pins is not None:
                self.pins.pin(space_of(model), history, len(ids))
        return Finished(
            text=result.text,
            finish_reason="length" if result.finish_reason == "length" else "stop",
            prompt_tokens=len(ids),
            cached_tokens=restored.cached_tokens if restored else 0,
            completion_tokens=result.generated_tokens,
        )
