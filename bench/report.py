"""Each benchmark owns one `## ` section of docs/benchmarks.md and rewrites only that section."""

from __future__ import annotations

from pathlib import Path

BENCH_DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(section: str, doc: Path = BENCH_DOC) -> None:
    """Replace the section whose heading is `section`'s first line (or append it), keeping the others."""
    heading = section.lstrip("\n").splitlines()[0].strip()
    if not heading.startswith("## "):
        raise ValueError(f"a benchmark section starts with its '## ' heading, not {heading!r}")
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    body = section.strip("\n").splitlines()
    if start is None:
        lines += ["", *body]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [*body, ""] if end < len(lines) else body
    doc.write_text("\n".join(lines).rstrip("\n") + "\n")
