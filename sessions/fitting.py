"""A turn's prompt sized to the model's context: retrieval gets the room left, old turns make way.

Room is counted in tokens: context = prompt (system, history, the new message with its retrieved
code) + the reply. The reply keeps at least `reply_reserve` tokens (its max_tokens, at most a quarter of
the context), retrieved code gets what is left after the conversation (never more than the session's
rag_budget), and when the conversation alone outgrows the context the oldest turns are left out of the
prompt (they stay in the session's transcript), as Aider and Claude Code's /compact keep a long chat
going. Only a new message that does not fit on its own is an error, and it says by how much.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sessions.model import Message
from sessions.prompt import build_prompt


class PromptTooLong(Exception):
    """The new message (with the system prompt) does not fit the context even with no history."""


@dataclass
class Fitted:
    token_ids: list[int]
    max_tokens: int  # the reply's budget: the session's max_tokens, or less when the context is full
    dropped_messages: int = 0  # oldest messages left out of this prompt
    dropped_tokens: int = 0  # what they cost (tokens the prompt would have had with them)


def reply_reserve(context_length: int, max_tokens: int) -> int:
    return max(1, min(max_tokens, context_length // 4))


def retrieval_budget(context_length: int, conversation_tokens: int, max_tokens: int, rag_budget: int) -> int:
    """Tokens retrieved code may take: the room the conversation and the reply leave, capped at rag_budget."""
    room = context_length - conversation_tokens - reply_reserve(context_length, max_tokens)
    return max(0, min(rag_budget, room))


def fit_prompt(
    tokenizer: Any,
    system_prompt: str | None,
    messages: Sequence[Message],
    thinking: bool,
    chunk_ids: Callable[[dict[str, Any]], list[int]],
    history: Sequence[int] | None,
    context_length: int,
    max_tokens: int,
    model_name: str,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Fitted:
    """The prompt for `messages` (the last is the new user message) that leaves room for a reply."""
    reserve = reply_reserve(context_length, max_tokens)
    full = build_prompt(tokenizer, system_prompt, messages, thinking, chunk_ids, history, tools).token_ids
    ids, dropped = full, 0
    while len(ids) + reserve > context_length and dropped < len(messages) - 1:
        dropped = _next_cut(messages, dropped)
        kept = messages[dropped:]
        ids = build_prompt(tokenizer, system_prompt, kept, thinking, chunk_ids, None, tools).token_ids
    room = context_length - len(ids)
    if room < 1:
        over = len(ids) + 1 - context_length  # a reply needs at least one token
        if tools:
            kept = messages[dropped:]
            bare = build_prompt(tokenizer, system_prompt, kept, thinking, chunk_ids, None, None).token_ids
            raise PromptTooLong(_with_tools(len(ids), len(ids) - len(bare), model_name, context_length, over))
        raise PromptTooLong(
            f"the new message is {len(ids)} prompt tokens with the system prompt and its retrieved code; "
            f"{model_name} has a context of {context_length} tokens, so it is {over} tokens over "
            f"(shorten it, turn retrieval off with --no-rag, or use a model with a longer context)"
        )
    return Fitted(ids, min(max_tokens, room), dropped, len(full) - len(ids) if dropped else 0)


def _with_tools(prompt: int, schema_tokens: int, model_name: str, context_length: int, over: int) -> str:
    """The overflow of an agent turn, naming what the tool schemas cost: usually the biggest part."""
    fits = "; without them it fits" if over <= schema_tokens else ""
    return (
        f"the new message is {prompt} prompt tokens with the system prompt, the tool schemas "
        f"({schema_tokens} tokens{fits}) and its retrieved code; {model_name} has a context of "
        f"{context_length} tokens, so it is {over} tokens over (offer no tools with --allow-tools none, "
        f"shorten the message, turn retrieval off with --no-rag, or use a model with a longer context)"
    )


def _next_cut(messages: Sequence[Message], dropped: int) -> int:
    """Drop through the next user message's reply: a prompt starts at a user message, never mid-turn."""
    cut = dropped + 1
    while cut < len(messages) - 1 and messages[cut].role != "user":
        cut += 1
    return cut
