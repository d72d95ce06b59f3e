"""One turn, run on the engine thread: assemble, restore, generate, stream, record, save.

Nothing is written before the model is loaded and the prompt fits: a bad model or an oversized
prompt leaves the store untouched. Then the user message is recorded (fsync) before generation,
partial text is appended every `partial_interval_s` while generating (so kill -9 leaves an
interrupted reply), and the reply is recorded when generation ends, cancelled or not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sessions.events import CacheStats, Delta, Result, Retrieval, RetrievedChunk, SessionStarted
from sessions.model import Message, Session, title_from_prompt
from sessions.options import TurnOptions, model_name
from sessions.prompt import build_prompt
from sessions.retrieval import Retrieved, Retriever
from sessions.store import SessionStore
from sessions.turn import Turn

log = logging.getLogger("workbench.sessions")


@dataclass
class TurnJob:
    turn: Turn
    session: Session | None  # a new session, not yet stored; None: load turn.session_id when the job runs
    is_new: bool
    prompt: str
    options: TurnOptions
    store: SessionStore
    load_model: Callable[[str, str | None], Any]
    blocks: Callable[[], Any]  # the BlockStore, or None when it cannot be opened
    retriever: Retriever
    lease: Callable[[str], None]  # takes the session's lease (a new session's, once it is stored)
    partial_interval_s: float = 0.5


class TurnFailed(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_turn(job: TurnJob) -> None:
    """Run `job` and always end its Turn with one Result."""
    try:
        if job.session is None:
            # Loaded here, not when the turn was queued: a turn queued behind another sees its reply.
            job.session = job.store.load(job.turn.session_id)
        result = _run(job)
    except TurnFailed as exc:
        result = _error(job, str(exc), exc.exit_code)
    except Exception as exc:
        log.exception("turn of session %s failed", job.turn.session_id)
        result = _error(job, f"{type(exc).__name__}: {exc}", getattr(exc, "exit_code", 1))
    job.turn.emit(result)


def _error(job: TurnJob, message: str, exit_code: int) -> Result:
    s = job.session
    return Result(
        job.turn.session_id,
        model=s.model if s else "",
        backend=(s.backend or "") if s else "",
        finish_reason="error",
        is_error=True,
        error=message,
        exit_code=exit_code,
    )


def _load(job: TurnJob) -> tuple[Any, str]:
    """The model and the name the session records for it (a directory's absolute path)."""
    from engine.errors import EngineError, ModelNotFoundError

    s = job.session
    name = model_name(job.options.model) if job.options.model else s.model
    try:
        return job.load_model(name, job.options.backend), name
    except (EngineError, OSError) as exc:
        code = 3 if isinstance(exc, ModelNotFoundError | FileNotFoundError) else 1
        if job.is_new or job.options.model:
            raise TurnFailed(f"model {name!r} could not be loaded: {exc}", code) from None
        raise TurnFailed(
            f"session {s.id} uses model {s.model!r}, which is not available here ({exc}); to continue this "
            "session with another model (its KV cache is not reused), resume it with a model given "
            "(`--model NAME`)",
            code,
        ) from None


def _run(job: TurnJob) -> Result:
    import engine

    s, turn, opts = job.session, job.turn, job.options
    model, name = _load(job)
    if turn.cancelled:
        return Result(s.id, model=name, backend=model.backend, finish_reason="cancelled", exit_code=130)
    settings = opts.apply(s.settings)
    tok = model.tokenizer
    user = Message(role="user", content=job.prompt)
    retrieved = Retrieved(skipped="RAG is off for this session")
    if settings.rag:
        retrieved = job.retriever.retrieve(s.repo, job.prompt, tok, settings.rag_k, settings.rag_budget)
        user.context = retrieved.chunks

    def chunk_ids(chunk: dict[str, Any]) -> list[int]:
        return retrieved.chunk_ids(chunk) or tok.encode(chunk["text"])

    # The history is only meaningful to the model (and tokenizer) that produced it.
    history = s.history if s.history_fingerprint == model.fingerprint else None
    prompt_ids = build_prompt(
        tok, settings.system_prompt, [*s.messages, user], settings.thinking, chunk_ids, history
    ).token_ids
    room = model.context_length - len(prompt_ids)
    if room < 1:
        raise TurnFailed(
            f"the prompt of session {s.id} is {len(prompt_ids)} tokens, more than the context of "
            f"{model.context_length} tokens of {name}; fork the session at an earlier message",
            1,
        )
    max_tokens = min(settings.sampling.max_tokens, room)

    # -- from here on, the turn is recorded ------------------------------------------------------
    same_blocks = s.history_fingerprint in ("", model.fingerprint)
    if job.is_new:
        s.model, s.fingerprint, s.backend, s.settings = name, model.fingerprint, model.backend, settings
        job.lease(s.id)
        job.store.create(s)
    else:
        changes: dict[str, Any] = {}
        if settings != s.settings:
            changes["settings"] = settings
        for key, value in (
            ("model", name),
            ("fingerprint", model.fingerprint),
            ("backend", model.backend),
        ):
            if getattr(s, key) != value:
                changes[key] = value
        if not same_blocks:
            changes["history_reset"] = True
        if not s.title:
            changes["title"] = title_from_prompt(job.prompt)
        if changes:
            job.store.update_meta(s, **changes)
    kv_reuse = same_blocks and not opts.no_cache
    turn.emit(
        SessionStarted(
            s.id,
            model=name,
            backend=model.backend,
            title=s.title,
            repo=s.repo,
            created=job.is_new,
            messages=len(s.messages),
            kv_reuse=kv_reuse,
        )
    )
    chunks = [
        RetrievedChunk(c["path"], c["start_line"], c["end_line"], c["symbol"], c["score"], c["tokens"])
        for c in retrieved.chunks
    ]
    turn.emit(
        Retrieval(
            s.id,
            chunks=chunks,
            tokens=retrieved.tokens,
            budget=settings.rag_budget if settings.rag else 0,
            skipped=retrieved.skipped,
        )
    )
    job.store.seal_open_reply(s)
    job.store.append_message(s, user)
    reply_index = len(s.messages)

    cache = model.make_cache()
    blocks = None if opts.no_cache else job.blocks()  # --no-cache: no block read or written
    from engine.blocks import RestoreResult

    restored = RestoreResult()
    if blocks is not None:
        # Even after a model switch: blocks are addressed by model identity, so whatever is found (a
        # system prompt another session shares) is exact for this model.
        # The previous turn's blocks may still be in the background writer's queue (turns back to back,
        # as in scripts): wait for them, or this turn would recompute what the last one just computed.
        blocks.flush()
        h = s.history
        history_len = len(h) if h and prompt_ids[: len(h)] == h else None
        restored = blocks.restore(model, cache, prompt_ids, history_len)
    turn.emit(
        CacheStats(
            s.id,
            prompt_tokens=len(prompt_ids),
            cached_tokens=restored.cached_tokens,
            by_tier=dict(restored.by_tier),
            prefill_tokens=len(prompt_ids) - restored.cached_tokens,
            bytes_read=restored.bytes_read,
            restore_s=restored.restore_s,
            enabled=blocks is not None,
        )
    )

    sp = settings.sampling
    params = engine.SamplingParams(
        temperature=sp.temperature,
        top_k=sp.top_k,
        top_p=sp.top_p,
        min_p=sp.min_p,
        repetition_penalty=sp.repetition_penalty,
        seed=sp.seed,
        max_tokens=max_tokens,
    )
    pending = {"answer": "", "reasoning": ""}
    streamed = {"answer": "", "reasoning": ""}
    last_flush = time.monotonic()
    gen_result = None
    error: str | None = None
    try:
        for ev in engine.generate(
            model,
            prompt_ids,
            params,
            cache=cache,
            last_logits=restored.last_logits,
            cancel=turn.cancel_event,
            reasoning=settings.thinking,
        ):
            if isinstance(ev, engine.GenerationResult):
                gen_result = ev
                continue
            if not ev.text:
                continue
            kind = "reasoning" if ev.kind == "reasoning" else "answer"
            pending[kind] += ev.text
            streamed[kind] += ev.text
            turn.emit(Delta(s.id, text=ev.text, kind=kind))
            if time.monotonic() - last_flush >= job.partial_interval_s:
                job.store.append_partial(s, reply_index, pending["answer"], pending["reasoning"], time.time())
                pending = {"answer": "", "reasoning": ""}
                last_flush = time.monotonic()
    except Exception as exc:  # the engine failed mid-turn: keep what was generated, as interrupted
        log.exception("generation failed in session %s", s.id)
        error = f"{type(exc).__name__}: {exc}"

    finish = gen_result.finish_reason if gen_result is not None else "error"
    generated = gen_result.token_ids if gen_result is not None else []
    # After an engine failure the cache may be half-updated: keep the session's previous history and
    # save no block from it.
    history = (prompt_ids + generated)[: cache.offset] if error is None else None
    tokens = {
        "prompt": len(prompt_ids),
        "cached": restored.cached_tokens,
        "prefilled": gen_result.prefilled_tokens if gen_result else 0,
        "generated": len(generated),
    }
    timings = _timings(gen_result, restored.restore_s)
    reply = Message(
        role="assistant",
        content=gen_result.text if gen_result else streamed["answer"],
        reasoning=gen_result.reasoning if gen_result else streamed["reasoning"],
        status="complete" if finish not in ("cancelled", "error") else "interrupted",
        model=name,
        finish_reason=finish,
        timings=timings,
        cache={**tokens, "by_tier": dict(restored.by_tier), "bytes_read": restored.bytes_read},
        error=error,
    )
    if blocks is not None and history:  # (None after a failure, empty if nothing was computed)
        try:
            blocks.save(model, cache, history)
            blocks.pin(s.id, model, history)
        except Exception as exc:  # the reply is worth more than its cache: record it regardless
            log.warning("session %s: KV blocks not saved (%s)", s.id, exc)
    job.store.append_message(s, reply, history=history, fingerprint=model.fingerprint, dtype=model.kv_dtype)
    return Result(
        s.id,
        text=reply.content,
        reasoning=reply.reasoning,
        model=name,
        backend=model.backend,
        finish_reason=finish,
        tokens=tokens,
        timings=timings,
        cache_by_tier=dict(restored.by_tier),
        retrieved=[
            {k: c[k] for k in ("path", "start_line", "end_line", "symbol", "score")} for c in retrieved.chunks
        ],
        message=reply_index + 1,
        is_error=error is not None,
        error=error,
        exit_code=130 if finish == "cancelled" else (1 if error else 0),
    )


def _timings(gen: Any, restore_s: float) -> dict[str, float]:
    """Seconds and rates; ttft_s counts from the start of the KV restore to the first token."""
    if gen is None:
        return {"restore_s": round(restore_s, 6)}
    values = {
        "ttft_s": restore_s + gen.ttft_s,
        "restore_s": restore_s,
        "prefill_s": gen.prefill_s,
        "prefill_tok_s": gen.prefill_tok_s,
        "decode_s": gen.decode_s,
        "decode_tok_s": gen.decode_tok_s,
    }
    return {k: round(float(v), 6) for k, v in values.items()}
