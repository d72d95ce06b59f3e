"""Generation: prefill what the cache lacks, then sample token by token, streaming text deltas.

`generate()` is a generator of `Delta`s followed by exactly one `GenerationResult`. It only needs
`model.forward(ids, cache) -> float32 [vocab]`, `model.make_cache()`, `model.config` and
`model.tokenizer`, so any backend serves.

Text passes three stages before it is streamed: the detokenizer (whole UTF-8 characters only), the
stop-string filter (holds back text that might begin a stop string; a matched stop string is never
emitted), and, with `reasoning=True`, the splitter that routes <think>...</think> to "reasoning".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.detok import ANSWER, REASONING, ReasoningSplitter, StreamingDetokenizer
from engine.errors import ContextLengthError, EngineError, PassCancelled
from engine.sampling import SamplingParams, make_sampler

# Prefill in the model's own chunks (sized by measurement in engine/model.py); cancellation is noticed
# between the layers of a chunk (Model.forward's `cancel`), within ~1/28 of a chunk's time.


@dataclass
class Delta:
    """A piece of streamed text. `t` is seconds since generate() started; `token_ids` are the tokens
    sampled since the previous delta (text can lag tokens while a character or stop string is pending)."""

    text: str
    kind: str = ANSWER
    token_ids: list[int] = field(default_factory=list)
    t: float = 0.0


@dataclass
class GenerationResult:
    """The whole generation. `token_ids` holds every sampled token, including a final EOS; `text` is the
    answer and `reasoning` the thinking (empty unless reasoning=True). Times are seconds."""

    token_ids: list[int]
    text: str
    reasoning: str
    finish_reason: str  # "stop" (EOS) | "length" | "stop_string" | "cancelled"
    prompt_tokens: int
    prefilled_tokens: int
    generated_tokens: int
    ttft_s: float
    prefill_s: float
    decode_s: float
    prefill_tok_s: float
    decode_tok_s: float


class StopStringFilter:
    """Passes text through until a stop string appears; holds back a tail that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buf[: min(hits)]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(buf), len(stop) - 1), keep, -1):
                if buf.endswith(stop[:n]):
                    keep = n
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _check_request(model: Any, prompt_ids: Sequence[int], params: SamplingParams, cache: Any) -> None:
    if len(prompt_ids) == 0:
        raise EngineError("cannot generate from an empty prompt: give at least one token")
    limit = int(model.config.max_position_embeddings)
    needed = len(prompt_ids) + params.max_tokens
    if needed > limit:
        room = limit - len(prompt_ids)
        advice = f"lower max_tokens to at most {room}" if room > 0 else "shorten the prompt"
        raise ContextLengthError(
            f"prompt of {len(prompt_ids)} tokens + max_tokens {params.max_tokens} = {needed} tokens exceeds "
            f"the model's context of {limit} tokens (max_position_embeddings); {advice}"
        )
    ids = np.asarray(prompt_ids, dtype=np.int64)
    vocab = int(model.config.vocab_size)
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if bad.size:
        first = int(bad[0])
        raise EngineError(
            f"prompt token {int(ids[first])} at position {first} is outside the vocabulary (size {vocab})"
        )
    if cache is not None and cache.offset > len(prompt_ids):
        raise EngineError(
            f"the cache holds {cache.offset} positions but the prompt has only {len(prompt_ids)} tokens; "
            "a restored cache must hold a prefix of the prompt"
        )


def _prompt_opens_reasoning(tokenizer: Any, prompt_ids: Sequence[int], splitter: ReasoningSplitter) -> bool:
    """True when the prompt ends inside an open <think> block (templates that start the thinking)."""
    tail = tokenizer.decode(list(prompt_ids[-16:]))
    return tail.rfind(splitter.open_tag) > tail.rfind(splitter.close_tag)


def generate(
    model: Any,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    cache: Any = None,
    last_logits: np.ndarray | None = None,
    cancel: threading.Event | None = None,
    reasoning: bool = False,
) -> Iterator[Delta | GenerationResult]:
    """Stream a reply to `prompt_ids`: Deltas, then one GenerationResult.

    `cache` may already hold a prefix of the prompt (restored KV blocks): only the rest is prefilled;
    if it holds the whole prompt, `last_logits` (the logits after its last token) is used, or else the
    last position is trimmed and recomputed. Afterwards the cache holds prompt + generated tokens, all
    but the final sampled one. `cancel` is checked before every decode step and between the layers of
    a prefill.
    """
    _check_request(model, prompt_ids, params, cache)
    t0 = time.perf_counter()
    cancelled = cancel.is_set if cancel is not None else lambda: False
    cache = model.make_cache() if cache is None else cache
    tokenizer = model.tokenizer
    prompt_tokens = len(prompt_ids)

    # --- prefill ---------------------------------------------------------------------------------
    start = cache.offset
    logits = None
    if start == prompt_tokens and last_logits is not None:
        logits = np.asarray(last_logits, dtype=np.float32)
    elif start == prompt_tokens:
        cache.trim(start - 1)
        start -= 1
    prefilled = prompt_tokens - start if logits is None else 0
    pos = start
    while logits is None or pos < prompt_tokens:
        if cancelled():
            break
        end = min(pos + model.prefill_chunk, prompt_tokens)
        try:
            logits = model.forward(list(prompt_ids[pos:end]), cache, cancel=cancelled)
        except PassCancelled:  # between two layers of this chunk; the cache holds the chunks before it
            break
        pos = end
    prefill_s = time.perf_counter() - t0
    if pos < prompt_tokens:  # cancelled during prefill
        yield _result([], "", "", "cancelled", prompt_tokens, pos - start, 0, prefill_s, prefill_s, 0.0)
        return

    # --- decode ----------------------------------------------------------------------------------
    sampler = make_sampler(params, prompt_ids)
    detok = StreamingDetokenizer(tokenizer)
    stop_filter = StopStringFilter(params.stop)
    splitter = ReasoningSplitter() if reasoning else None
    if splitter is not None:
        splitter.in_reasoning = _prompt_opens_reasoning(tokenizer, prompt_ids, splitter)
    eos = tokenizer.eos_token_ids
    generated: list[int] = []
    pending_ids: list[int] = []
    pieces = {ANSWER: [], REASONING: []}
    ttft = 0.0
    finish = "length"

    def emit(text: str) -> Iterator[Delta]:
        parts = splitter.feed(text) if splitter is not None else ([(ANSWER, text)] if text else [])
        for kind, piece in parts:
            pieces[kind].append(piece)
            yield Delta(piece, kind, pending_ids[:], time.perf_counter() - t0)
            pending_ids.clear()

    while True:
        if cancelled():
            finish = "cancelled"
            break
        token = sampler(logits)
        generated.append(token)
        pending_ids.append(token)
        if len(generated) == 1:
            ttft = time.perf_counter() - t0
        if token in eos:
            finish = "stop"
            break
        yield from emit(stop_filter.feed(detok.add(token)))
        if stop_filter.stopped:
            finish = "stop_string"
            break
        if len(generated) >= params.max_tokens:
            finish = "length"
            break
        if cancelled():
            finish = "cancelled"
            break
        logits = model.forward([token], cache)

    # --- drain what the stages still hold ----------------------------------------------------------
    if not stop_filter.stopped:
        yield from emit(stop_filter.feed(detok.flush()))
        yield from emit(stop_filter.flush())
    if splitter is not None:
        for kind, piece in splitter.flush():
            pieces[kind].append(piece)
            yield Delta(piece, kind, pending_ids[:], time.perf_counter() - t0)
            pending_ids.clear()

    total = time.perf_counter() - t0
    decode_s = total - ttft if generated else 0.0
    yield _result(
        generated,
        "".join(pieces[ANSWER]),
        "".join(pieces[REASONING]),
        finish,
        prompt_tokens,
        prefilled,
        len(generated),
        ttft if generated else total,
        prefill_s,
        decode_s,
    )


def _result(
    token_ids: list[int],
    text: str,
    reasoning: str,
    finish: str,
    prompt_tokens: int,
    prefilled: int,
    generated: int,
    ttft_s: float,
    prefill_s: float,
    decode_s: float,
) -> GenerationResult:
    # The first token comes out of prefill; decode speed counts the tokens after it.
    decode_steps = max(generated - 1, 0)
    return GenerationResult(
        token_ids=token_ids,
        text=text,
        reasoning=reasoning,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        prefilled_tokens=prefilled,
        generated_tokens=generated,
        ttft_s=ttft_s,
        prefill_s=prefill_s,
        decode_s=decode_s,
        prefill_tok_s=prefilled / prefill_s if prefill_s > 0 and prefilled else 0.0,
        decode_tok_s=decode_steps / decode_s if decode_s > 0 and decode_steps else 0.0,
    )
