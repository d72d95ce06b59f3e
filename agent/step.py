"""A loop step on an engine model, keeping one KV cache across the steps of a loop.

Each step's prompt extends the tokens the model saw and produced (the previous reply's tokens as sampled,
then the template's text after that reply: the tool results and the next generation prompt), so a step
prefills only the new tokens. When the conversation cannot be continued that way (the reply did not end
at its end-of-turn token, or earlier messages changed) the canonical rendering is used, the cache is cut
back to the longest common prefix, and a cache-bust report says where and why.

The session runner does the same with its KV block store; this step is the reference for it and what the
tests and the bench drive.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import engine
from agent.cachebust import common_prefix, diagnose


class ContextFull(Exception):
    """A step's prompt (the conversation with the tool results so far) leaves no room for a reply."""


@dataclass
class StepOutput:
    text: str
    reasoning: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    prefilled_tokens: int
    generated_tokens: int
    ttft_s: float
    continued: bool  # the prompt extended the previous step's tokens instead of a re-rendering
    cache_bust: dict[str, Any] | None = None


class EngineStep:
    def __init__(self, model: Any, params: engine.SamplingParams, tools: Sequence[dict[str, Any]] | None,
                 *, thinking: bool = False, continue_history: bool = True,
                 close_cut: bool = False) -> None:  # fmt: skip
        self.model, self.params, self.thinking = model, params, thinking
        # A reply cut short (max_tokens, cancel) gets its last token fed, so the cache holds every token
        # it produced: what a session's next turn extends (sessions/recording.py does the same).
        self.close_cut = close_cut
        self.on_prefill: Callable[[int, int], None] | None = None  # the next step's prefill progress
        self.tools = list(tools) if tools else None
        self.continue_history = continue_history
        self.cache: Any = None
        self.cached_ids: list[int] = []  # what the cache holds
        self._history: list[int] | None = None  # prompt + reply up to (not including) its end-of-turn token
        self._seen: list[dict[str, Any]] = []  # the messages the last prompt was made from, plus its reply
        self._first: tuple[list[int], Any] | None = None

    def start(self, prompt_ids: list[int], cache: Any, last_logits: Any = None) -> None:
        """Make the first step use a prompt built elsewhere (the session's, with its restored KV blocks)."""
        self.cache, self.cached_ids = cache, list(prompt_ids[: cache.offset])
        self._first = (list(prompt_ids), last_logits)

    def render(self, messages: Sequence[dict[str, Any]], generation_prompt: bool = True) -> str:
        return self.model.tokenizer.render_chat(list(messages), add_generation_prompt=generation_prompt,
                                                enable_thinking=self.thinking, tools=self.tools)  # fmt: skip

    def prompt(self, messages: Sequence[dict[str, Any]]) -> tuple[list[int], bool]:
        """The step's prompt ids, and whether they continue the previous step's tokens."""
        tok = self.model.tokenizer
        rendered = self.render(messages)
        continued = self._continuation(messages, rendered) if self.continue_history else None
        if continued is not None:
            return continued, True
        return tok.encode(rendered), False

    def _continuation(self, messages: Sequence[dict[str, Any]], rendered: str) -> list[int] | None:
        seen = self._seen
        if self._history is None or not seen or len(messages) <= len(seen):
            return None
        if list(messages[: len(seen)]) != seen:  # an earlier message changed: not the same conversation
            return None
        reply = seen[-1]["content"]
        if any(m["role"] not in ("tool", "user") for m in messages[len(seen) :]) or not reply:
            return None
        at = rendered.rfind(reply, 0, len(rendered) - sum(len(m["content"]) for m in messages[len(seen) :]))
        if at < 0:
            return None
        suffix = self.model.tokenizer.encode(rendered[at + len(reply) :])
        # The text after the reply must start at its end-of-turn token: a clean token boundary.
        if not suffix or suffix[0] not in self.model.tokenizer.eos_token_ids:
            return None
        return [*self._history, *suffix]

    def __call__(self, messages: list[dict[str, Any]], cancel: threading.Event) -> Iterator[Any]:
        last_logits = None
        if self._first is not None:
            (prompt_ids, last_logits), continued, bust = self._first, False, None
            self._first = None
        else:
            prompt_ids, continued = self.prompt(messages)
            bust = self._bust(messages, prompt_ids)
        if len(prompt_ids) >= self.model.context_length:
            raise ContextFull(
                f"this step's prompt is {len(prompt_ids):,} tokens with the tool results so far; the model's "
                f"context is {self.model.context_length:,} tokens, so the loop stops here (smaller reads "
                "would fit: a read_file line range, a narrower grep)"
            )
        if self.cache is None:
            self.cache = self.model.make_cache()
        keep = common_prefix(self.cached_ids, prompt_ids)
        if keep < self.cache.offset:
            self.cache.trim(keep)
            last_logits = None  # they belong to the end of what was just cut off
        cached = self.cache.offset
        # Later steps have longer prompts: the reply gets what room the context has left.
        room = self.model.context_length - len(prompt_ids)
        params = dataclasses.replace(self.params, max_tokens=max(1, min(self.params.max_tokens, room)))
        final = None
        for ev in engine.generate(self.model, prompt_ids, params, cache=self.cache, cancel=cancel,
                                  reasoning=self.thinking, last_logits=last_logits,
                                  on_prefill=self.on_prefill):  # fmt: skip
            if isinstance(ev, engine.Delta):
                yield ev
            else:
                final = ev
        assert final is not None
        self._after(messages, prompt_ids, final)
        yield StepOutput(final.text, final.reasoning, final.finish_reason, len(prompt_ids), cached,
                         final.prefilled_tokens, final.generated_tokens, final.ttft_s, continued,
                         bust.to_dict() if bust else None)  # fmt: skip

    def _bust(self, messages: list[dict[str, Any]], prompt_ids: list[int]) -> Any:
        def render_prefix(i: int) -> str:
            try:
                return self.render(messages[:i], generation_prompt=False)
            except Exception:  # templates may refuse a prefix (Llama wants its first user message)
                return ""

        return diagnose(self.cached_ids, prompt_ids, messages, render_prefix,
                        self.model.tokenizer.decode)  # fmt: skip

    def _after(self, messages: list[dict[str, Any]], prompt_ids: list[int], final: Any) -> None:
        sampled = list(final.token_ids)
        # The cache holds the prompt and every sampled token but the last (never fed back).
        self.cached_ids = [*prompt_ids, *sampled[:-1]][: self.cache.offset]
        if self.close_cut and final.finish_reason in ("length", "cancelled") and sampled:
            self._feed_last(prompt_ids, sampled)
        eos = self.model.tokenizer.eos_token_ids
        ended_at_eos = final.finish_reason == "stop" and bool(sampled) and sampled[-1] in eos
        self._history = [*prompt_ids, *sampled[:-1]] if ended_at_eos and not final.reasoning else None
        self._seen = [*messages, {"role": "assistant", "content": final.text}]

    def _feed_last(self, prompt_ids: list[int], sampled: list[int]) -> None:
        produced = [*prompt_ids, *sampled]
        if self.cache.offset != len(produced) - 1 or len(produced) > self.model.context_length:
            return
        try:
            self.model.forward([sampled[-1]], self.cache)
        except Exception:  # the reply stands without it; the next turn just recomputes a little more
            self.cache.trim(len(produced) - 1)
            return
        self.cached_ids = produced
