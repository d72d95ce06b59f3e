"""One turn, run on the engine thread, as phases over one TurnState:

    load -> prepare (settings, retrieval, prompt) -> record_start -> restore -> stream -> finish

Nothing is written before the model is loaded and the prompt fits: a bad model, an oversized prompt
or a cancel before `record_start` leaves the store untouched (and a new session uncreated). Then the
user message is recorded (fsync) before generation, partial text is appended every
`partial_interval_s` while generating (so kill -9 leaves an interrupted reply), and the reply is
recorded when generation ends, cancelled or not. An agent turn runs the tool loop in place of `stream`
and `finish` (sessions/agent_turn.py), mostly off the engine thread.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from core.errors import UsageError
from sessions.agent_turn import cache_bust, run_agent_turn, tool_schemas
from sessions.events import (
    CacheStats,
    IndexProgress,
    ModelLoading,
    Prefill,
    Result,
    Retrieval,
    RetrievedChunk,
    SessionStarted,
)
from sessions.events import TextDelta as Delta
from sessions.fitting import Fitted, PromptTooLong, fit_prompt, retrieval_budget
from sessions.model import Message, Session, Settings
from sessions.options import TurnOptions, model_name
from sessions.recording import finish_turn, record_start
from sessions.retrieval import Retrieved, Retriever
from sessions.store import SessionStore
from sessions.turn import Turn
from sessions.warm import LIVE_TIER, LiveCache

log = logging.getLogger("workbench.sessions")

PREFILL_EVENT_S = 0.1  # prefill progress events at most this often (plus the last one)


@dataclass
class TurnJob:
    turn: Turn
    session: Session  # a new session (not yet stored) or the resumed one's id only; loaded at `load`
    is_new: bool
    prompt: str
    options: TurnOptions
    store: SessionStore
    load_model: Callable[..., Any]  # (name, backend, cancel) -> model, or None when cancelled first
    is_loaded: Callable[[str, str | None], bool]
    blocks: Callable[[], Any]  # the BlockStore, or None when it cannot be opened
    retriever: Retriever
    lease: Callable[[str], None]  # takes the session's lease (a new session's, once it is stored)
    partial_interval_s: float = 0.5
    live: LiveCache = field(default_factory=lambda: LiveCache(0))  # the service's kept cache (warm.py)
    # Runs a callable on the engine thread, later, as a future: an agent turn leaves the engine thread
    # between its generations (sessions/agent_turn.py). None: the turn runs wholly where it was called.
    on_engine: Callable[[Callable[[], Any]], Future[Any]] | None = None


@dataclass
class TurnState:
    """What the phases hand on to each other."""

    job: TurnJob
    model: Any = None
    name: str = ""
    settings: Settings | None = None
    user: Message | None = None
    retrieved: Retrieved = field(default_factory=Retrieved)
    rerun_at: int | None = None  # a re-run: the index of the user message already recorded for it
    fitted: Fitted | None = None
    rag_budget: int = 0  # retrieved tokens allowed: the session's budget or the room the context leaves
    kv_reuse: bool = True
    reply_index: int = 0
    cache: Any = None
    blocks: Any = None
    restored: Any = None
    gen: Any = None  # the engine's GenerationResult
    streamed: dict[str, str] = field(default_factory=lambda: {"answer": "", "reasoning": ""})
    error: str | None = None

    @property
    def session(self) -> Session:
        return self.job.session

    @property
    def cancelled(self) -> bool:
        return self.job.turn.cancelled


class TurnFailed(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_turn(job: TurnJob) -> None:
    """Run `job` and always end its Turn with one Result (an agent turn's own thread may emit it)."""
    state = TurnState(job)
    try:
        result = _phases(state)
    except TurnFailed as exc:
        result = _error(state, str(exc), exc.exit_code)
    except Exception as exc:
        log.exception("turn of session %s failed", job.session.id)
        result = _error(state, f"{type(exc).__name__}: {exc}", getattr(exc, "exit_code", 1))
    if result is not None:
        keep_live(state, result)
        job.turn.emit(result)


def keep_live(state: TurnState, result: Result) -> None:
    """Keep the turn's cache for the session's next turn when it holds exactly the saved history (a
    turn that failed or never built a cache leaves the slot as it is: emptied by `take`, or untouched)."""
    s = state.job.session
    if not result.is_error and state.cache is not None and not state.job.options.no_cache:
        state.job.live.keep(s.id, state.model.fingerprint, s.history, state.cache)


def _phases(state: TurnState) -> Result | None:
    job = state.job
    if not job.is_new:
        # Loaded here, not when the turn was queued: a turn queued behind another sees its reply.
        job.session = job.store.load(job.session.id)
    for phase in (load, prepare):
        phase(state)
        if state.cancelled:
            return _cancelled(state)
    record_start(state)
    restore(state)
    if job.options.allow_tools != "none":  # an agent turn: the tool loop streams, records and ends it
        return run_agent_turn(state)
    stream(state)
    return finish_turn(state)


def _cancelled(state: TurnState) -> Result:
    """A turn cancelled before anything was recorded."""
    return Result(
        state.job.turn.session_id,
        model=state.name,
        backend=state.model.backend if state.model is not None else "",
        finish_reason="cancelled",
        exit_code=130,
    )


def _error(state: TurnState, message: str, exit_code: int) -> Result:
    s = state.job.session
    return Result(
        state.job.turn.session_id,
        model=s.model,
        backend=s.backend or "",
        finish_reason="error",
        is_error=True,
        error=message,
        exit_code=exit_code,
    )


# -- phases --------------------------------------------------------------------------------------------


def load(state: TurnState) -> None:
    """The model (reporting the load when it is not loaded yet), and the name the session records."""
    from engine.errors import EngineError, ModelNotFoundError

    job, s = state.job, state.job.session
    name = model_name(job.options.model) if job.options.model else s.model
    state.name = name
    backend = job.options.backend
    sid = job.turn.session_id
    size = None if job.is_loaded(name, backend) else _weights_bytes(name)
    loading = size is not None  # (None also when the model is not there: the load says what is wrong)
    if loading:
        job.turn.emit(ModelLoading(sid, name=name, bytes=size or 0, done=False))
    try:
        state.model = job.load_model(name, backend, job.turn.cancel_event)
    except UsageError as exc:  # a setting the loader reads, e.g. a bad $WORKBENCH_PRECISION
        raise TurnFailed(str(exc), exc.exit_code) from None
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
    if loading and state.model is not None:
        job.turn.emit(ModelLoading(sid, name=name, bytes=size or 0, done=True))


def _weights_bytes(name: str) -> int | None:
    from engine.errors import EngineError
    from engine.loader import resolve_path

    try:
        return sum(p.stat().st_size for p in resolve_path(name).glob("*.safetensors"))
    except (EngineError, OSError):
        return None


def _tools(options: TurnOptions) -> list[dict[str, Any]] | None:
    """The tool schemas of an agent turn (sessions/agent_turn.py), None for a plain turn."""
    return tool_schemas() if options.allow_tools != "none" else None


def prepare(state: TurnState) -> None:
    """Settings, retrieved code sized to the room left, and the prompt that fits the context."""
    job, s, model = state.job, state.job.session, state.model
    settings = state.settings = job.options.apply(s.settings)
    tok = model.tokenizer
    state.user = user = Message(role="user", content=job.prompt)
    # The history is only meaningful to the model (and tokenizer) that produced it.
    history = s.history if s.history_fingerprint == model.fingerprint else None
    max_tokens = settings.sampling.max_tokens
    tools = _tools(job.options)
    state.rerun_at = recorded_prompt(s, job.prompt) if job.options.rerun else None
    earlier = s.messages if state.rerun_at is None else s.messages[: state.rerun_at]

    def fit(chunk_ids: Callable[[dict[str, Any]], list[int]]) -> Fitted:
        try:
            return fit_prompt(tok, settings.system_prompt, [*earlier, user], settings.thinking, chunk_ids,
                              history, model.context_length, max_tokens, state.name, tools)  # fmt: skip
        except PromptTooLong as exc:
            raise TurnFailed(f"session {s.id}: {exc}", 1) from None

    state.fitted = fit(lambda c: tok.encode(c["text"]))
    if settings.rag:
        state.rag_budget = retrieval_budget(
            model.context_length, len(state.fitted.token_ids), max_tokens, settings.rag_budget
        )

        def progress(report: Any) -> None:  # the index refresh, as events (a terminal line in text mode)
            with contextlib.suppress(RuntimeError):  # a cancelled turn ended; its refresh goes on quietly
                # The turn's id, not s.id: a new session's id is reported only once it exists.
                job.turn.emit(IndexProgress(job.turn.session_id, **report.to_dict()))

        retrieved = job.retriever.retrieve_cancellable(
            s.repo, job.prompt, tok, settings.rag_k, state.rag_budget, job.turn.cancel_event, progress
        )
        if retrieved is None:
            return  # cancelled while waiting for the index
        state.retrieved, user.context = retrieved, retrieved.chunks
        if retrieved.chunks:
            state.fitted = fit(lambda c: retrieved.chunk_ids(c) or tok.encode(c["text"]))
    else:
        state.retrieved = Retrieved(skipped="RAG is off for this session")


def recorded_prompt(s: Session, prompt: str) -> int | None:
    """Index of the user message `prompt` when the session ends with it, unanswered or with only an
    interrupted reply rebuilt from partial records (what a turn whose process died leaves); else None."""
    open_tail = 2 if s.open_reply is not None and s.open_reply == len(s.messages) - 1 else 1
    at = len(s.messages) - open_tail
    if at >= 0 and s.messages[at].role == "user" and s.messages[at].content == prompt:
        return at
    return None


def retrieval_event(state: TurnState) -> Retrieval:
    r = state.retrieved
    chunks = [
        RetrievedChunk(c["path"], c["start_line"], c["end_line"], c["symbol"], c["score"], c["tokens"])
        for c in r.chunks
    ]
    return Retrieval(
        state.session.id, chunks=chunks, tokens=r.tokens, budget=state.rag_budget, skipped=r.skipped
    )


def session_event(state: TurnState) -> SessionStarted:
    s = state.session
    return SessionStarted(
        s.id,
        model=state.name,
        backend=state.model.backend,
        title=s.title,
        repo=s.repo,
        created=state.job.is_new,
        messages=len(s.messages),  # messages before this turn
        kv_reuse=state.kv_reuse,
        context_size=state.model.context_length,
        precision=getattr(state.model, "precision", "fp32"),
        kv_dtype=getattr(state.model, "kv_dtype", "float32"),
    )


def restore(state: TurnState) -> None:
    """Restore what the block store holds of the prompt into a fresh cache; report it."""
    from kvstore import RestoreResult, space_of

    s, prompt_ids = state.session, state.fitted.token_ids
    t0 = time.perf_counter()
    no_cache = state.job.options.no_cache
    kept = None if no_cache else state.job.live.take(s.id, state.model.fingerprint, prompt_ids)
    state.cache = kept if kept is not None else state.model.make_cache()
    state.blocks = None if no_cache else state.job.blocks()  # --no-cache: no block I/O
    state.restored = RestoreResult()
    if kept is not None:  # the session's own cache, kept in this process since its last turn or open
        n = kept.offset
        state.restored = RestoreResult(n, {LIVE_TIER: n}, restore_s=time.perf_counter() - t0)
    elif state.blocks is not None:
        # Even after a model switch: blocks are addressed by model identity, so whatever is found (a
        # system prompt another session shares) is exact for this model.
        # The previous turn's blocks may still be in the background writer's queue (turns back to back,
        # as in scripts): wait for them, or this turn would recompute what the last one just computed.
        state.blocks.flush()
        h = s.history
        history_len = len(h) if h and prompt_ids[: len(h)] == h else None
        state.restored = state.blocks.restore(space_of(state.model), state.cache, prompt_ids, history_len)
    r = state.restored
    state.job.turn.emit(
        CacheStats(
            s.id,
            prompt_tokens=len(prompt_ids),
            cached_tokens=r.cached_tokens,
            by_tier=dict(r.by_tier),
            prefill_tokens=len(prompt_ids) - r.cached_tokens,
            bytes_read=r.bytes_read,
            restore_s=r.restore_s,
            enabled=state.blocks is not None,
            dropped_messages=state.fitted.dropped_messages,
            dropped_tokens=state.fitted.dropped_tokens,
            cache_bust=cache_bust(s, state.model, state.settings, prompt_ids, _tools(state.job.options)),
        )
    )


def stream(state: TurnState) -> None:
    """Generate, streaming prefill progress and deltas; partial text goes to the log as it comes."""
    import engine

    job, s, sp = state.job, state.session, state.settings.sampling
    params = engine.SamplingParams(
        temperature=sp.temperature,
        top_k=sp.top_k,
        top_p=sp.top_p,
        min_p=sp.min_p,
        repetition_penalty=sp.repetition_penalty,
        seed=sp.seed,
        max_tokens=state.fitted.max_tokens,
    )
    pending = {"answer": "", "reasoning": ""}
    last_flush = time.monotonic()
    try:
        for ev in engine.generate(
            state.model,
            state.fitted.token_ids,
            params,
            cache=state.cache,
            last_logits=state.restored.last_logits,
            cancel=job.turn.cancel_event,
            reasoning=state.settings.thinking,
            on_prefill=prefill_reporter(job.turn, s.id),
        ):
            if isinstance(ev, engine.GenerationResult):
                state.gen = ev
                continue
            if not ev.text:
                continue
            kind = "reasoning" if ev.kind == "reasoning" else "answer"
            pending[kind] += ev.text
            state.streamed[kind] += ev.text
            job.turn.emit(Delta(s.id, text=ev.text, kind=kind))
            if time.monotonic() - last_flush >= job.partial_interval_s:
                job.store.append_partial(
                    s, state.reply_index, pending["answer"], pending["reasoning"], time.time()
                )
                pending = {"answer": "", "reasoning": ""}
                last_flush = time.monotonic()
    except Exception as exc:  # the engine failed mid-turn: keep what was generated, as interrupted
        log.exception("generation failed in session %s", s.id)
        state.error = f"{type(exc).__name__}: {exc}"


def prefill_reporter(turn: Turn, session_id: str) -> Callable[[int, int], None]:
    """Prefill events, strictly increasing and at most every PREFILL_EVENT_S, always the last one."""
    last = {"done": 0, "t": 0.0}

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done <= last["done"] or (done < total and now - last["t"] < PREFILL_EVENT_S):
            return
        last["done"], last["t"] = done, now
        turn.emit(Prefill(session_id, done=done, total=total))

    return report
