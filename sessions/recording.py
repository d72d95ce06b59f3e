"""The phases of a turn that write the session: its start (meta, user message) and its end (reply, KV).

A reply cut short (max_tokens, cancel) is closed for the next turn: its last sampled token is fed to
the cache so that the saved history is every token the model produced, and the next prompt extends it
with the template's end-of-turn text (sessions/prompt.py), reusing all of it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sessions.events import Result
from sessions.model import Message, title_from_prompt

if TYPE_CHECKING:
    from sessions.runner import TurnState

log = logging.getLogger("workbench.sessions")

CUT = ("length", "cancelled")  # replies that ended without their end-of-turn token


def record_start(state: TurnState) -> None:
    """Create or update the session, report it and what was retrieved, record the user message."""
    from sessions.runner import retrieval_event, session_event

    job, s, model = state.job, state.session, state.model
    same_blocks = s.history_fingerprint in ("", model.fingerprint)
    if job.is_new:
        s.model, s.fingerprint, s.backend, s.settings = (
            state.name,
            model.fingerprint,
            model.backend,
            state.settings,
        )
        job.lease(s.id)
        job.store.create(s)
    else:
        changes: dict[str, Any] = {}
        if state.settings != s.settings:
            changes["settings"] = state.settings
        for key, value in (
            ("model", state.name),
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
    state.kv_reuse = same_blocks and not job.options.no_cache
    job.turn.emit(session_event(state))
    job.turn.emit(retrieval_event(state))
    if state.rerun_at is not None:  # the prompt is in the log already: record only the reply
        # At the interrupted reply's index, so that on replay the new reply replaces its partial records.
        del s.messages[state.rerun_at + 1 :]
        s.open_reply = None
    else:
        job.store.seal_open_reply(s)
        job.store.append_message(s, state.user)
    state.reply_index = len(s.messages)


def finish_turn(state: TurnState) -> Result:
    """Save and pin the KV blocks, record the reply, and build the Result."""
    job, s, gen, r = state.job, state.session, state.gen, state.restored
    prompt_ids = state.fitted.token_ids
    finish = gen.finish_reason if gen is not None else "error"
    generated = gen.token_ids if gen is not None else []
    # After an engine failure the cache may be half-updated: keep the session's previous history and
    # save no block from it.
    history = None
    if state.error is None:
        history = (prompt_ids + generated)[: state.cache.offset]
        if finish in CUT and generated:
            history = _close_cut_reply(state, prompt_ids + generated) or history
    tokens = {
        "prompt": len(prompt_ids),
        "cached": r.cached_tokens,
        "prefilled": gen.prefilled_tokens if gen else 0,
        "generated": len(generated),
    }
    timings = _timings(gen, r.restore_s)
    cache_info: dict[str, Any] = {**tokens, "by_tier": dict(r.by_tier), "bytes_read": r.bytes_read}
    if state.fitted.dropped_messages:  # the transcript says what the model no longer saw
        cache_info["dropped_messages"] = state.fitted.dropped_messages
        cache_info["dropped_tokens"] = state.fitted.dropped_tokens
    reply = Message(
        role="assistant",
        content=gen.text if gen else state.streamed["answer"],
        reasoning=gen.reasoning if gen else state.streamed["reasoning"],
        status="complete" if finish not in ("cancelled", "error") else "interrupted",
        model=state.name,
        finish_reason=finish,
        timings=timings,
        cache=cache_info,
        error=state.error,
    )
    if state.blocks is not None and history:  # (None after a failure, empty if nothing was computed)
        try:
            from kvstore import space_of

            space = space_of(state.model)
            state.blocks.save(space, state.cache, history)
            state.blocks.pin(s.id, space, history)
        except Exception as exc:  # the reply is worth more than its cache: record it regardless
            log.warning("session %s: KV blocks not saved (%s)", s.id, exc)
    model = state.model
    job.store.append_message(s, reply, history=history, fingerprint=model.fingerprint, dtype=model.kv_dtype)
    return Result(
        s.id,
        text=reply.content,
        reasoning=reply.reasoning,
        model=state.name,
        backend=model.backend,
        finish_reason=finish,
        tokens=tokens,
        timings=timings,
        cache_by_tier=dict(r.by_tier),
        retrieved=[
            {k: c[k] for k in ("path", "start_line", "end_line", "symbol", "score")}
            for c in state.retrieved.chunks
        ],
        message=state.reply_index + 1,
        is_error=state.error is not None,
        error=state.error,
        exit_code=130 if finish == "cancelled" else (1 if state.error else 0),
    )


def _close_cut_reply(state: TurnState, produced: list[int]) -> list[int] | None:
    """Feed the last sampled token (one decode step) so the cache holds every token of a cut reply."""
    cache = state.cache
    if cache.offset != len(produced) - 1 or len(produced) > state.model.context_length:
        return None
    try:
        state.model.forward([produced[-1]], cache)
    except Exception as exc:  # the reply is recorded regardless; the next turn just recomputes more
        log.warning("session %s: the cut reply's last token was not cached (%s)", state.session.id, exc)
        cache.trim(len(produced) - 1)
        return None
    return produced


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
