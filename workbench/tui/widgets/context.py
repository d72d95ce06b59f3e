"""What the context panel and the status line say: retrieved code, the cache report, progress bars."""

from __future__ import annotations

from typing import Any


def progress_bar(done: int, total: int, width: int = 10) -> str:
    """A text progress bar for the status line: `▰▰▰▱▱▱▱▱▱▱ 30%`."""
    fraction = min(1.0, done / total) if total else 0.0
    filled = round(fraction * width)
    return "▰" * filled + "▱" * (width - filled) + f" {fraction:.0%}"


def context_report(retrieval: Any, cache: Any) -> str:
    """The context panel's text: the chunks retrieved for the turn and its cache report."""
    lines = ["[b]Retrieved code[/b]"]
    if retrieval is None:
        lines.append("[dim]none[/]")
    elif retrieval.skipped:
        lines.append(f"[dim]skipped: {retrieval.skipped}[/]")
    else:
        for chunk in retrieval.chunks:
            symbol = f" {chunk.symbol}" if chunk.symbol else ""
            lines.append(
                f"{chunk.path}:{chunk.start_line}-{chunk.end_line}{symbol}  "
                f"[dim]{chunk.score:.2f} · {chunk.tokens} tok[/]"
            )
        lines.append(f"[dim]{retrieval.tokens:,} of {retrieval.budget:,} tokens[/]")
    if cache is not None:
        tiers = ", ".join(f"{tier} {n:,}" for tier, n in cache.by_tier.items()) or "none"
        lines += [
            "",
            "[b]Cache[/b]",
            f"prompt {cache.prompt_tokens:,} · reused {cache.cached_tokens:,}"
            f" · prefilled {cache.prefill_tokens:,}",
            f"from: {tiers} · restore {cache.restore_s:.2f} s",
        ]
        bust = getattr(cache, "cache_bust", None)
        if bust:  # the prompt stopped extending the cached history: where, why, and what it cost
            where = f"message {bust['message_index'] + 1}" if bust.get("message_index") is not None else "?"
            lines.append(
                f"[b]cache bust[/b] at token {bust['token_index']:,} ({where}): "
                f"{bust['reason'].replace('_', ' ')}, {bust['wasted_tokens']:,} tokens prefilled again"
            )
    return "\n".join(lines)
