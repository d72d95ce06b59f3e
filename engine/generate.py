"""Text generation on top of the token-level steps of engine/steps.py, streaming text deltas.

`generate()` is a generator of `Delta`s followed by exactly one `GenerationResult`. It only needs
`model.forward(ids, cache, cancel, progress) -> float32 [vocab]`, `model.make_cache()`, `model.config`
and `model.tokenizer`, so any backend serves.

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
from engine.sampling import SamplingParams, make_sampler
from engine.steps import Progress, check_prompt, generate_tokens


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
    on_prefill: Progress | None = None,
) -> Iterator[Delta | GenerationResult]:
    """Stream a reply to `prompt_ids`: Deltas, then one GenerationResult.

    `cache` may already hold a prefix of the prompt (restored KV blocks): only the rest is prefilled;
    if it holds the whole prompt, `last_logits` (the logits after its last token) is used, or else the
    last position is trimmed and recomputed. Afterwards the cache holds prompt + generated tokens, all
    but the final sampled one. `cancel` is checked before every decode step and between the layers of
    a prefill; `on_prefill(done, total)` reports the prefill's progress (engine/steps.py).
    """
    check_prompt(model, prompt_ids, cache, params.max_tokens)
    t0 = time.perf_counter()
    stream = generate_tokens(
        model,
        prompt_ids,
        make_sampler(params, prompt_ids),
        cache=cache,
        last_logits=last_logits,
        cancel=cancel.is_set if cancel is not None else None,
        on_prefill=on_prefill,
    )
    text = _TextStages(model.tokenizer, params.stop, prompt_ids if reasoning else None)
    eos = model.tokenizer.eos_token_ids
    generated: list[int] = []
    ttft = 0.0
    finish = "length"
    for step in stream:
        generated.append(step.token)
        text.pending_ids.append(step.token)
        if len(generated) == 1:
            ttft = time.perf_counter() - t0
        if step.token in eos:
            finish = "stop"
            break
        yield from text.add(step.token, t0)
        if text.stop_filter.stopped:
            finish = "stop_string"
            break
        if len(generated) >= params.max_tokens:
            break
    if stream.cancelled:
        finish = "cancelled"
    if generated or not stream.cancelled:
        yield from text.drain(t0)
    total = time.perf_counter() - t0
    yield _result(
        generated,
        "".join(text.pieces[ANSWER]),
        "".join(text.pieces[REASONING]),
        finish,
        len(prompt_ids),
        stream.prefilled,
        len(generated),
        ttft if generated else total,
        stream.prefill_s,
        total - ttft if generated else 0.0,
    )


class _TextStages:
    """Tokens to text deltas: detokenizer -> stop-string filter -> reasoning splitter (if asked)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], reasoning_prompt: Sequence[int] | None) -> None:
        self.detok = StreamingDetokenizer(tokenizer)
        self.stop_filter = StopStringFilter(stops)
        self.splitter = ReasoningSplitter() if reasoning_prompt is not None else None
        if self.splitter is not None and reasoning_prompt is not None:
            self.splitter.in_reasoning = _prompt_opens_reasoning(tokenizer, reasoning_prompt, self.splitter)
        self.pending_ids: list[int] = []  # sampled since the last delta
        self.pieces: dict[str, list[str]] = {ANSWER: [], REASONING: []}

    def add(self, token: int, t0: float) -> Iterator[Delta]:
        return self._emit(self.stop_filter.feed(self.detok.add(token)), t0)

    def _emit(self, text: str, t0: float) -> Iterator[Delta]:
        parts = self.splitter.feed(text) if self.splitter is not None else ([(ANSWER, text)] if text else [])
        yield from self._deltas(parts, t0)

    def _deltas(self, parts: Sequence[tuple[str, str]], t0: float) -> Iterator[Delta]:
        for kind, piece in parts:
            self.pieces[kind].append(piece)
            yield Delta(piece, kind, self.pending_ids[:], time.perf_counter() - t0)
            self.pending_ids.clear()

    def drain(self, t0: float) -> Iterator[Delta]:
        """What the stages still hold, once generation has ended."""
        if not self.stop_filter.stopped:
            yield from self._emit(self.stop_filter.feed(self.detok.flush()), t0)
            yield from self._emit(self.stop_filter.flush(), t0)
        if self.splitter is not None:
            yield from self._deltas(self.splitter.flush(), t0)


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
