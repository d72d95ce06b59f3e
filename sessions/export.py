"""A session as Markdown (for reading and sharing) or JSON (everything, for tools)."""

from __future__ import annotations

import json
import time

from sessions.model import Message, Session


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def to_json(session: Session) -> str:
    """Info, settings and every message; the token history is left out (it is only for the KV cache)."""
    return json.dumps(session.to_dict(), ensure_ascii=False, indent=2)


def to_markdown(session: Session) -> str:
    lines = [
        f"# {session.title}",
        "",
        f"- session: `{session.id}`",
        f"- repo: `{session.repo}`",
        f"- model: `{session.model}`" + (f" ({session.backend})" if session.backend else ""),
        f"- created: {_when(session.created)}, updated: {_when(session.updated)}",
    ]
    if session.parent_id:
        lines.append(f"- forked from `{session.parent_id}` at message {session.fork_at}")
    if session.settings.system_prompt:
        lines += ["", "## System prompt", "", session.settings.system_prompt]
    for number, message in enumerate(session.messages, start=1):
        lines += ["", *_message_markdown(number, message)]
    return "\n".join(lines) + "\n"


def _message_markdown(number: int, message: Message) -> list[str]:
    status = " (interrupted)" if message.status == "interrupted" else ""
    out = [f"## {number}. {message.role}{status}", ""]
    if message.context:
        refs = ", ".join(f"`{c['path']}:{c['start_line']}-{c['end_line']}`" for c in message.context)
        out += [f"_Retrieved context: {refs}_", ""]
    if message.reasoning:
        quoted = "\n".join("> " + ln for ln in message.reasoning.splitlines())
        out += ["<details><summary>reasoning</summary>", "", quoted, "", "</details>", ""]
    out.append(message.content)
    for call in message.tool_calls:
        out += ["", "```json", json.dumps(call, ensure_ascii=False, indent=2), "```"]
    for result in message.tool_results:
        out += ["", "```", json.dumps(result, ensure_ascii=False, indent=2), "```"]
    stats = _stats_line(message)
    if stats:
        out += ["", f"_{stats}_"]
    if message.error:
        out += ["", f"_error: {message.error}_"]
    return out


def _stats_line(message: Message) -> str:
    parts = []
    cache, timings = message.cache, message.timings
    if cache.get("prompt"):
        parts.append(f"prompt {cache['prompt']} tok, cached {cache.get('cached', 0)}")
    if cache.get("generated"):
        parts.append(f"generated {cache['generated']} tok")
    if timings.get("decode_tok_s"):
        parts.append(f"{timings['decode_tok_s']:.1f} tok/s")
    if timings.get("ttft_s") is not None and parts:
        parts.append(f"ttft {timings['ttft_s']:.2f} s")
    return ", ".join(parts)
