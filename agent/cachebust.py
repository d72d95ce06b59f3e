"""The cache-bust report: where a prompt stopped matching the cached history, in which message, why, and
what that cost in prefill.

A loop step (or a turn) normally extends what the model already saw, so only new tokens are prefilled.
When it does not, the tokens from the first difference on are recomputed; saying where and why points at
the cause: a template that re-renders past messages differently, a changed system prompt or tool list,
an edited message, another model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

REASONS = ("model_changed", "tools_changed", "system_prompt_changed", "message_changed", "template_rerender")


@dataclass(frozen=True)
class CacheBust:
    token_index: int  # first prompt token that differs from the cached history (= tokens reused)
    message_index: int | None  # the message (0-based, in the rendered list) holding that token
    role: str | None
    reason: str  # one of REASONS
    detail: str  # one sentence for people
    cached_tokens: int  # tokens the cache held
    wasted_tokens: int  # cached tokens thrown away and prefilled again: the cost

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def diagnose(
    cached_ids: Sequence[int],
    prompt_ids: Sequence[int],
    new_messages: Sequence[dict[str, Any]],
    render_prefix: Callable[[int], str],
    decode: Callable[[Sequence[int]], str],
    *,
    tools_changed: bool = False,
    model_changed: bool = False,
) -> CacheBust | None:
    """The report for a prompt that does not extend `cached_ids`, or None when it does.

    `render_prefix(i)` is the rendered text of the first `i` new messages (no generation prompt);
    `decode(ids)` the tokenizer's decode. The message is found by character offset of the first
    differing token in the new rendering; it changed if its text is not in what the model saw, else the
    template rendered it differently.
    """
    if not cached_ids:
        return None
    at = common_prefix(cached_ids, prompt_ids)
    if at >= len(cached_ids):
        return None
    wasted = min(len(cached_ids), len(prompt_ids)) - at
    if model_changed:
        return CacheBust(0, None, None, "model_changed", "another model: no cached tokens apply",
                         len(cached_ids), len(cached_ids))  # fmt: skip
    index = _message_at(len(decode(list(prompt_ids[:at]))), len(new_messages), render_prefix)
    role = new_messages[index]["role"] if index is not None else None
    seen = decode(list(cached_ids))
    reason, detail = _why(index, role, new_messages, seen, tools_changed)
    return CacheBust(at, index, role, reason, detail, len(cached_ids), wasted)


def _message_at(char: int, count: int, render_prefix: Callable[[int], str]) -> int | None:
    for i in range(count):
        if len(render_prefix(i + 1)) > char:
            return i
    return count - 1 if count else None


def _why(index: int | None, role: str | None, new: Sequence[dict[str, Any]], seen: str,
         tools_changed: bool) -> tuple[str, str]:  # fmt: skip
    if tools_changed and (index is None or role == "system" or index == 0):
        return "tools_changed", "the tool list (in the system prompt) changed"
    if index is None:
        return "template_rerender", "the template renders the conversation differently"
    content = new[index].get("content")
    if isinstance(content, str) and content and content in seen:
        return "template_rerender", (f"message {index} ({role}) is unchanged but the template renders it "
                                     "differently from the tokens the model saw")  # fmt: skip
    if role == "system":
        return "system_prompt_changed", "the system prompt changed"
    return "message_changed", f"message {index} ({role}) differs from the cached history"
