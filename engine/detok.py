"""Streaming text out of token ids: whole UTF-8 characters only, and reasoning split from the answer.

`StreamingDetokenizer.add(token_id)` returns the text that token completes. A byte-level BPE token can
end in the middle of a multi-byte character (an emoji is often 2-4 tokens); those bytes are held back
until the character is complete, so no caller ever sees a broken character or a U+FFFD that the full
decode would not have. Each step costs O(token length), never a re-decode of the whole sequence.

`ReasoningSplitter` turns a text stream into ("reasoning" | "answer", text) pieces around
<think>...</think>, including tags split across tokens.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.tokenizer import Tokenizer

REASONING = "reasoning"
ANSWER = "answer"


class StreamingDetokenizer:
    """Incremental decode of one sequence; the concatenated output equals `tok.decode(all_ids)`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self._table = tokenizer.token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Generic path (non byte-level tokenizers): decode a short window of recent ids, emitting only
        # the text past what the window's prefix already produced (the vLLM/TGI offsets scheme).
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def add(self, token_id: int) -> str:
        """The text completed by `token_id` ("" while a character is still incomplete)."""
        if self._table is not None:
            # Ids past the tokenizer (padding rows of the embedding) decode to nothing, as in tok.decode.
            data = self._table[token_id] if 0 <= token_id < len(self._table) else b""
            return self._utf8.decode(data)
        self._ids.append(token_id)
        prefix = self._tok.decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._tok.decode(self._ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            # Drop ids no window will read again, so the list stays short on long generations.
            if self._prefix_offset > 64:
                del self._ids[: self._prefix_offset]
                self._read_offset -= self._prefix_offset
                self._prefix_offset = 0
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD, as in a full decode)."""
        if self._table is not None:
            return self._utf8.decode(b"", final=True)
        prefix = self._tok.decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._tok.decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix) :] if len(text) > len(prefix) else ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (text to hold back)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Split a text stream into reasoning (inside <think>...</think>) and answer pieces.

    The tags are not emitted. Newlines that only frame the block are dropped, as the chat templates do
    when they re-render a reply: leading newlines of the reasoning, trailing newlines before </think>,
    and leading newlines of the answer right after </think>. `in_reasoning=True` starts inside a block,
    for prompts whose template already opened <think>.
    """

    def __init__(
        self, open_tag: str = "<think>", close_tag: str = "</think>", in_reasoning: bool = False
    ) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.in_reasoning = in_reasoning
        self._pending = ""
        self._at_start = True  # at the start of the current section: strip its leading newlines
        self._newlines = ""  # trailing newlines of the reasoning, held until we know they are not framing

    def feed(self, text: str) -> list[tuple[str, str]]:
        """Pieces (kind, text) that `text` completes, in order; partial tags are held back."""
        out: list[tuple[str, str]] = []
        self._pending += text
        while self._pending:
            tag = self.close_tag if self.in_reasoning else self.open_tag
            idx = self._pending.find(tag)
            if idx >= 0:
                self._emit(out, self._pending[:idx], final=True)
                self._pending = self._pending[idx + len(tag) :]
                self.in_reasoning = not self.in_reasoning
                self._at_start = True
                self._newlines = ""
                continue
            keep = _partial_suffix(self._pending, tag)
            ready = self._pending[: len(self._pending) - keep]
            self._pending = self._pending[len(ready) :]
            self._emit(out, ready, final=False)
            break
        return out

    def flush(self) -> list[tuple[str, str]]:
        """Release everything held back (an unclosed block stays reasoning)."""
        out: list[tuple[str, str]] = []
        text, self._pending = self._pending, ""
        self._emit(out, text, final=False)
        if self._newlines:
            out.append((REASONING, self._newlines))
            self._newlines = ""
        return out

    def _emit(self, out: list[tuple[str, str]], text: str, final: bool) -> None:
        if self._at_start:
            text = text.lstrip("\n")
            if not text:
                return
            self._at_start = False
        if not self.in_reasoning:
            if text:
                out.append((ANSWER, text))
            return
        # Reasoning: hold trailing newlines back; at the close tag (final) they are framing and dropped.
        text = self._newlines + text
        body = text.rstrip("\n")
        self._newlines = "" if final else text[len(body) :]
        if body:
            out.append((REASONING, body))
