"""Prompt assembly: system prompt, history and retrieved code, rendered with the model's chat template.

Retrieved code goes before the prompt of the user message it was retrieved for, and stays in the
history: re-rendering a session gives the model exactly the tokens it saw, so the next turn's prompt
extends the last one and its KV blocks are reused. The chat template is rendered with a marker in
place of each context block; the text between markers is tokenized, and each block's tokens are
spliced in from the indexer's pre-tokenized chunks (`ix.token_ids`) instead of tokenizing chunk text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sessions.model import Message

# Private-use characters: never produced by a tokenizer from ordinary text, so a safe split marker.
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"
CONTEXT_INTRO = "Relevant code from the repository:\n"
CONTEXT_OUTRO = "\n"


def chunk_header(chunk: dict[str, Any]) -> str:
    symbol = f" ({chunk['symbol']})" if chunk.get("symbol") else ""
    return f"\n--- {chunk['path']}:{chunk['start_line']}-{chunk['end_line']}{symbol}\n"


@dataclass
class Prompt:
    token_ids: list[int]
    text: str  # the rendered template with the context blocks written out (for display and tests)


def template_messages(system_prompt: str | None, messages: Sequence[Message], marker: bool) -> list[dict]:
    """Messages in the shape chat templates take; user messages with context carry a marker."""
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    for i, m in enumerate(messages):
        content = m.content
        if m.role == "user" and m.context and marker:
            content = f"{_MARK_OPEN}{i}{_MARK_CLOSE}{content}"
        entry: dict[str, Any] = {"role": m.role, "content": content}
        if m.tool_calls:
            entry["tool_calls"] = m.tool_calls
        out.append(entry)
    return out


def context_text(chunks: Sequence[dict[str, Any]]) -> str:
    return CONTEXT_INTRO + "".join(chunk_header(c) + c["text"] + "\n" for c in chunks) + CONTEXT_OUTRO


def context_ids(
    tokenizer: Any, chunks: Sequence[dict[str, Any]], chunk_ids: Callable[[dict[str, Any]], list[int]]
) -> list[int]:
    ids = tokenizer.encode(CONTEXT_INTRO)
    for c in chunks:
        ids += tokenizer.encode(chunk_header(c)) + chunk_ids(c) + tokenizer.encode("\n")
    return ids + tokenizer.encode(CONTEXT_OUTRO)


def build_prompt(
    tokenizer: Any,
    system_prompt: str | None,
    messages: Sequence[Message],
    thinking: bool,
    chunk_ids: Callable[[dict[str, Any]], list[int]] | None = None,
) -> Prompt:
    """Token ids of the whole conversation plus the generation prompt.

    `chunk_ids(chunk)` gives a retrieved chunk's token ids (pre-tokenized); by default its text is
    tokenized, which gives the same ids for text the indexer tokenized the same way.
    """
    ids_of = chunk_ids or (lambda c: tokenizer.encode(c["text"]))
    rendered = tokenizer.render_chat(
        template_messages(system_prompt, messages, marker=True),
        add_generation_prompt=True,
        enable_thinking=thinking,
    )
    token_ids: list[int] = []
    text_parts: list[str] = []
    rest = rendered
    while _MARK_OPEN in rest:
        before, _, after = rest.partition(_MARK_OPEN)
        index_text, _, rest = after.partition(_MARK_CLOSE)
        chunks = messages[int(index_text)].context
        token_ids += tokenizer.encode(before) + context_ids(tokenizer, chunks, ids_of)
        text_parts += [before, context_text(chunks)]
    token_ids += tokenizer.encode(rest)
    text_parts.append(rest)
    return Prompt(token_ids, "".join(text_parts))
