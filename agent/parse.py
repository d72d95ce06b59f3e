"""Tool calls out of generated text, while it streams.

A parser is fed the answer's text deltas and returns events: `TextPiece` (answer text, shown as it comes),
`ToolCall` (a complete, well-formed call) and `CallError` (a call that is malformed or cut off: the loop
turns it into a tool result the model can read). Nothing fed to a parser raises.

Dialects:
- `qwen` (Qwen2.5/Qwen3 templates): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, anywhere in
  the reply, any number of them.
- `llama3` (Llama 3.1-3.3 JSON tool calls): the reply is `{"name": ..., "parameters": {...}}` (optionally
  after `<|python_tag|>`; several separated by `;`). A JSON object at the start of a reply that is not a
  call (no "name") is answer text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_RAW_SHOWN = 300  # characters of a bad call quoted back to the model


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]
    raw: str = field(repr=False, default="")


@dataclass(frozen=True)
class CallError:
    id: str
    error: str  # what is wrong, for the model to read
    raw: str = field(repr=False, default="")
    name: str | None = None  # the tool it meant to call, when that much could be read


ParseEvent = TextPiece | ToolCall | CallError


class JsonObjectScanner:
    """Follows a JSON object character by character (strings and escapes included) to find its end."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.started = False
        self.done = False

    def step(self, ch: str) -> None:
        if self.in_string:
            if self.escape:
                self.escape = False
            elif ch == "\\":
                self.escape = True
            elif ch == '"':
                self.in_string = False
            return
        if ch == '"' and self.started:
            self.in_string = True
        elif ch in "{[":
            self.started = True
            self.depth += 1
        elif ch in "}]" and self.started:
            self.depth -= 1
            if self.depth <= 0:
                self.done = True

    @property
    def inside(self) -> bool:
        return self.started and not self.done


def call_from_json(call_id: str, text: str, *, arguments_key: str = "arguments") -> ToolCall | CallError:
    """A call from the JSON text of one call; every way it can be wrong becomes a CallError."""
    raw = text.strip()
    if not raw:
        return CallError(call_id, f'empty tool call: expected {{"name": ..., "{arguments_key}": {{...}}}}')
    try:
        obj, end = json.JSONDecoder().raw_decode(raw)
    except json.JSONDecodeError as exc:
        return CallError(call_id, f"tool call is not valid JSON ({exc.msg} at char {exc.pos}): "
                                  f"{_quote(raw)}", raw, _guess_name(raw))  # fmt: skip
    if raw[end:].strip():
        return CallError(call_id, f"unexpected text after the tool call's JSON: {_quote(raw[end:])}", raw,
                         obj.get("name") if isinstance(obj, dict) else None)  # fmt: skip
    return call_from_object(call_id, obj, raw)


def call_from_object(call_id: str, obj: Any, raw: str) -> ToolCall | CallError:
    if not isinstance(obj, dict):
        return CallError(call_id, f"a tool call must be a JSON object, got {type(obj).__name__}", raw)
    if isinstance(obj.get("function"), dict):  # OpenAI style {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return CallError(call_id, 'a tool call needs a "name" (a non-empty string)', raw)
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models encode the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            error = f"arguments of {name} are a string that is not JSON ({exc.msg})"
            return CallError(call_id, error, raw, name)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return CallError(call_id, f"arguments of {name} must be a JSON object, got {type(args).__name__}",
                         raw, name)  # fmt: skip
    return ToolCall(call_id, name.strip(), args, raw)


def _quote(text: str) -> str:
    return repr(text if len(text) <= _RAW_SHOWN else text[:_RAW_SHOWN] + "...")


def _guess_name(raw: str) -> str | None:
    """The "name" of a call whose JSON is broken later on, if it can be read."""
    key = raw.find('"name"')
    if key < 0:
        return None
    rest = raw[key + 6 :].lstrip(" \t\n:").lstrip()
    if not rest.startswith('"'):
        return None
    close = rest.find('"', 1)
    return rest[1:close] if close > 1 else None


def held_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (held back: a tag may be
    split across deltas)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class _Ids:
    def __init__(self, prefix: str) -> None:
        self.prefix, self.n = prefix, 0

    def next(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n}"


class QwenToolCallParser:
    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def __init__(self, id_prefix: str = "call_") -> None:
        self._ids = _Ids(id_prefix)
        self._text = ""  # TEXT mode: held-back text
        self._raw: str | None = None  # CALL mode: the call's text so far
        self._scan = JsonObjectScanner()

    def feed(self, delta: str) -> list[ParseEvent]:
        events: list[ParseEvent] = []
        rest = delta
        while rest:
            rest = self._feed_text(rest, events) if self._raw is None else self._feed_call(rest, events)
        if self._raw is None and self._text:
            keep = held_prefix(self._text, self.OPEN)
            if len(self._text) > keep:
                events.append(TextPiece(self._text[: len(self._text) - keep]))
                self._text = self._text[len(self._text) - keep :]
        return events

    def _feed_text(self, delta: str, events: list[ParseEvent]) -> str:
        self._text += delta
        at = self._text.find(self.OPEN)
        if at < 0:
            return ""
        if at:
            events.append(TextPiece(self._text[:at]))
        rest = self._text[at + len(self.OPEN) :]
        self._text, self._raw, self._scan = "", "", JsonObjectScanner()
        return rest

    def _feed_call(self, delta: str, events: list[ParseEvent]) -> str:
        assert self._raw is not None
        for i, ch in enumerate(delta):
            self._raw += ch
            if self._scan.inside or (not self._scan.started and ch in "{["):
                self._scan.step(ch)
            if self._scan.in_string:
                continue  # a tag inside a JSON string is content (a file that mentions <tool_call>)
            if self._raw.endswith(self.CLOSE):
                events.append(self._finish(self._raw[: -len(self.CLOSE)]))
                return delta[i + 1 :]
            if self._raw.endswith(self.OPEN) and not self._scan.inside:
                # A new call opened without closing the previous one: take the previous as complete.
                events.append(self._finish(self._raw[: -len(self.OPEN)]))
                self._raw, self._scan = "", JsonObjectScanner()
        return ""

    def _finish(self, body: str) -> ParseEvent:
        self._raw = None
        return call_from_json(self._ids.next(), body)

    def close(self) -> list[ParseEvent]:
        """The end of the reply: held text is answer text; an open call is parsed or reported cut off."""
        if self._raw is None:
            text, self._text = self._text, ""
            return [TextPiece(text)] if text else []
        body = self._raw
        event = self._finish(body)
        if isinstance(event, CallError):
            event = CallError(event.id, f"tool call not closed with {self.CLOSE} (the reply ended): "
                                        f"{event.error}", body, event.name)  # fmt: skip
        return [event]


class Llama3ToolCallParser:
    TAG = "<|python_tag|>"

    def __init__(self, id_prefix: str = "call_") -> None:
        self._ids = _Ids(id_prefix)
        self._mode = "start"  # start | text | json | after
        self._held = ""  # start/after: whitespace (and a partial tag) not yet decided; text: a partial tag
        self._raw = ""
        self._tagged = False  # the current JSON came after <|python_tag|>: it must be a call
        self._scan = JsonObjectScanner()

    def feed(self, delta: str) -> list[ParseEvent]:
        events: list[ParseEvent] = []
        for ch in delta:
            self._step(ch, events)
        if self._mode == "text" and self._held:
            keep = held_prefix(self._held, self.TAG)
            if len(self._held) > keep:
                events.append(TextPiece(self._held[: len(self._held) - keep]))
                self._held = self._held[len(self._held) - keep :]
        return events

    def _step(self, ch: str, events: list[ParseEvent]) -> None:
        if self._mode == "json":
            self._step_json(ch, events)
            return
        self._held += ch
        if self._held.endswith(self.TAG):
            before = self._held[: -len(self.TAG)]
            if self._mode == "text" and before:
                events.append(TextPiece(before))
            self._start_json(tagged=True)
            return
        if self._mode == "text":
            return
        stripped = self._held.lstrip(" \t\r\n;" if self._mode == "after" else " \t\r\n")
        if not stripped or self.TAG.startswith(stripped):
            return  # still undecided
        if stripped[0] == "{":
            self._start_json(tagged=False)
            self._step("{", events)
            return
        self._mode = "text"

    def _step_json(self, ch: str, events: list[ParseEvent]) -> None:
        self._raw += ch
        if self._raw.endswith(self.TAG):
            # A special token, never content (not even inside a string): it ends this call, starts the next.
            self._raw = self._raw[: -len(self.TAG)]
            events.append(self._finish())
            self._start_json(tagged=True)
            return
        # Only JSON that starts the call is followed; `<|python_tag|>tool.call(...)` is collected as is.
        if self._scan.inside or (not self._scan.started and ch in "{[" and not self._raw[:-1].strip()):
            self._scan.step(ch)
            if self._scan.done:
                events.append(self._finish())

    def _start_json(self, tagged: bool) -> None:
        self._mode, self._raw, self._held, self._tagged = "json", "", "", tagged
        self._scan = JsonObjectScanner()

    def _finish(self) -> ParseEvent:
        raw, tagged = self._raw, self._tagged
        self._mode, self._raw, self._tagged = "after", "", False
        if not tagged and not _looks_like_call(raw):
            self._mode = "text"  # a JSON answer, not a call
            return TextPiece(raw)
        return call_from_json(self._ids.next(), raw, arguments_key="parameters")

    def close(self) -> list[ParseEvent]:
        if self._mode != "json":
            text, self._held = self._held, ""
            return [TextPiece(text)] if text else []
        raw, tagged = self._raw, self._tagged
        self._mode, self._raw, self._tagged = "text", "", False
        if not tagged and '"name"' not in raw:
            return [TextPiece(raw)]
        event = call_from_json(self._ids.next(), raw, arguments_key="parameters")
        if isinstance(event, ToolCall):  # `<|python_tag|>` then a complete non-object the scanner skipped
            return [event]
        error = f"incomplete or malformed tool call at the end of the reply: {event.error}"
        return [CallError(event.id, error, raw, event.name)]


def _looks_like_call(raw: str) -> bool:
    """An untagged JSON object is a call when it has a name and arguments (or is broken after a name)."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return '"name"' in raw
    return isinstance(obj, dict) and "name" in obj and ("parameters" in obj or "arguments" in obj)


ToolCallParser = QwenToolCallParser | Llama3ToolCallParser


def parser_for(arch_or_dialect: str, id_prefix: str = "call_") -> ToolCallParser:
    """The parser of a model family: its `model.arch` ("qwen2", "qwen3", "llama") or a dialect name."""
    name = arch_or_dialect.lower()
    if name.startswith("qwen"):
        return QwenToolCallParser(id_prefix)
    if name.startswith("llama"):
        return Llama3ToolCallParser(id_prefix)
    raise ValueError(f"no tool-call dialect for {arch_or_dialect!r} (known: qwen2, qwen3, llama)")
