"""`workbench run SCRIPT`: a file of prompts run as successive turns of one session.

A script is either JSON Lines (`{"prompt": "..."}` per line; chosen for `.jsonl` files and for files
whose first non-blank line is a JSON object) or plain text with one prompt per paragraph (paragraphs
are separated by blank lines). `-` reads the script from stdin. The whole script is read and checked
before the first turn starts.
"""

from __future__ import annotations

import argparse
import json

from core.errors import UsageError
from workbench import headless


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a file of prompts (one per paragraph, or JSONL) as turns of one session",
        description="Run the prompts of SCRIPT as successive turns of one session, printing each reply "
        "(text: replies separated by a blank line; json: one object per turn per line; stream-json: "
        "every event).",
    )
    p.add_argument("script", metavar="SCRIPT", help="prompts, one per paragraph, or JSONL; - for stdin")
    headless.add_turn_options(p, suppress=True)
    p.set_defaults(func=run)


def parse_script(text: str, name: str) -> list[str]:
    """The prompts of a script; UsageError naming the script (and line) when it has none or a bad one."""
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise UsageError(f"script {name} has no prompts")
    if name.endswith(".jsonl") or _is_json_object(first):
        return _jsonl_prompts(lines, name)
    prompts, paragraph = [], []
    for line in [*lines, ""]:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            prompts.append("\n".join(paragraph))
            paragraph = []
    return prompts


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _jsonl_prompts(lines: list[str], name: str) -> list[str]:
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"{name}:{number}: not a JSON object ({exc.msg})") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str):
            raise UsageError(f'{name}:{number}: expected {{"prompt": "..."}} with a string prompt')
        if not prompt.strip():
            raise UsageError(f"{name}:{number}: empty prompt")
        prompts.append(prompt)
    return prompts


def run(args: argparse.Namespace) -> int:
    prompts = parse_script(headless.read_text_file(args.script, "script"), args.script)
    request = headless.turn_request(args)
    return headless.run_turns(request, prompts)
