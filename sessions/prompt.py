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
# Replies whose history the next prompt may extend: ended by end-of-turn, or cut (closed by the template).
CONTINUABLE = ("stop", "length", "cancelled")
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
    history: Sequence[int] | None = None,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Prompt:
    """Token ids of the whole conversation plus the generation prompt.

    `chunk_ids(chunk)` gives a retrieved chunk's token ids (pre-tokenized); by default its text is
    tokenized, which gives the same ids for text the indexer tokenized the same way. `history`: the
    tokens the model saw and produced up to the end of the previous reply; when the previous turn can
    be continued from them (see `_continuation`), the prompt extends them instead of re-rendering.
    """
    ids_of = chunk_ids or (lambda c: tokenizer.encode(c["text"]))
    rendered = tokenizer.render_chat(
        template_messages(system_prompt, messages, marker=True),
        add_generation_prompt=True,
        enable_thinking=thinking,
        tools=tools or None,
    )
    token_ids, text_parts = _encode_spliced(tokenizer, rendered, messages, ids_of)
    if history:
        continued = _continuation(tokenizer, rendered, messages, ids_of, token_ids, history)
        if continued is not None:
            return continued
    return Prompt(token_ids, "".join(text_parts))


def _encode_spliced(
    tokenizer: Any, rendered: str, messages: Sequence[Message], ids_of: Callable[[dict[str, Any]], list[int]]
) -> tuple[list[int], list[str]]:
    """Tokenize rendered template text, splicing each marked context block's pre-tokenized ids."""
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
    return token_ids, text_parts


def _continuation(
    tokenizer: Any,
    rendered: str,
    messages: Sequence[Message],
    ids_of: Callable[[dict[str, Any]], list[int]],
    canonical: list[int],
    history: Sequence[int],
) -> Prompt | None:
    """The history the model really saw and produced, then the template's text after the previous reply.

    Templates may re-render a past reply differently from how it was generated (Qwen3 drops the empty
    think block of its generation prompt; BPE may split the reply's text differently from the sampled
    tokens), which would throw away the previous reply's KV blocks every turn. Extending the history
    keeps them. A reply cut short (max_tokens, a cancel) is closed the same way: its history holds every
    token it produced (sessions/recording.py feeds the last one), and the template's end-of-turn text
    follows. After an agent turn the previous reply is its last step's; the tool results after it are
    new text (the loop stopped before a step read them), and its earlier steps and results are in the
    history as they were prefilled.

    Only taken when it is provably the same conversation: the previous reply ended with its end-of-turn
    token or was cut, and has text; the history agrees with the canonical rendering through the first
    user message (same system prompt, tools and model); everything after the first difference is the
    messages' own text, in order, with no more than template text between them (`_explained`); and the
    text after the previous reply starts at an end-of-turn token (a clean token boundary) and holds the
    new user message. Anything else falls back to the canonical rendering.
    """
    if len(messages) < 2 or messages[-1].role != "user":
        return None
    j = len(messages) - 2
    while j > 0 and messages[j].role == "tool":  # results the previous turn's loop never read
        j -= 1
    previous, new = messages[j], messages[-1]
    if previous.role != "assistant" or previous.finish_reason not in CONTINUABLE:
        return None
    if previous.reasoning or not previous.content:
        return None
    after = sum(len(m.content) for m in messages[j + 1 :])
    at = rendered.rfind(previous.content, 0, len(rendered) - after)
    if at < 0:
        return None
    suffix = rendered[at + len(previous.content) :]
    if new.content not in suffix:
        return None
    suffix_ids, suffix_parts = _encode_spliced(tokenizer, suffix, messages, ids_of)
    if not suffix_ids or suffix_ids[0] not in tokenizer.eos_token_ids:
        return None
    same = 0
    for a, b in zip(history, canonical, strict=False):
        if a != b:
            break
        same += 1
    first_user = next((m.content for m in messages if m.role == "user"), "")
    if first_user and first_user not in tokenizer.decode(list(history[:same])):
        return None  # it differs before the first user message: another system prompt or tools
    if not _explained(tokenizer.decode(list(history[same:])), messages[: j + 1]):
        return None
    text = tokenizer.decode(list(history)) + "".join(suffix_parts)
    return Prompt([*history, *suffix_ids], text)


# Template text between two messages' contents (Qwen3's end of turn, next header and empty think block,
# a tool response's tags): more than this between them and the history is not these messages.
TEMPLATE_GAP = 160


def _explained(differing: str, messages: Sequence[Message]) -> bool:
    """Whether `differing` (the history's text from its first difference with the canonical rendering)
    is the tail of `messages`' contents, in order, with only template text (and a user message's
    retrieved code, before its content) between them. The first difference may fall inside a message."""
    last = messages[-1].content
    if last.endswith(differing):
        return True  # it differs inside the previous reply only (BPE split it otherwise)
    if not differing.endswith(last):
        return False
    pos, after = len(differing) - len(last), messages[-1]
    for m in reversed(messages[:-1]):
        if not m.content:
            continue
        allowed = TEMPLATE_GAP + _context_chars(after)
        i = differing.rfind(m.content, 0, pos)
        if i < 0 or pos - (i + len(m.content)) > allowed:
            return pos <= len(m.content) + allowed  # the first difference is inside `m` or just after it
        pos, after = i, m
    return pos <= TEMPLATE_GAP + _context_chars(after)


def _context_chars(message: Message) -> int:
    return len(context_text(message.context)) if message.context else 0
