"""The TUI while it works: UI CPU per streamed token, input latency during decode, a 200-message session.

Three measurements, each in fresh processes, beside their baselines from the same run:

- **stream**: the real AssistantMessage fed a Markdown reply (prose, a list, a code fence) at 30 tok/s
  for a fixed time, flushing every fragment / every 100 ms / every 200 ms (ours, chat.FLUSH_S) / 250 ms;
  the process's CPU over the stream, as % of one core and ms per token; plus the same app idle.
- **latency**: the real `workbench` app on the real session service and engine (random weights in
  Qwen3-0.6B's layer shapes, a 384-token test vocabulary) with the embedded Redis: keys typed into the
  prompt every 100 ms, time from the key event to the prompt's text holding it, first idle, then while a
  reply decodes.
- **session**: a 200-message session (100 turns of Markdown) opened with --resume: spawn to first frame
  and to the session shown, each "load earlier" (20 more messages), and page-up scrolling through them.

    python -m bench.tui_live_bench [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPLY = (
    "The loader reads the **config** first, then the weights:\n\n"
    "1. `resolve_path` finds the directory.\n2. `model_args` parses `config.json`.\n"
    "3. The safetensors are mapped, not read.\n\n"
    "```python\ndef load(path: Path) -> Model:\n    args = model_args(path)\n"
    "    weights = map_safetensors(path)\n    return Model(args, weights)\n```\n\n"
    "Each layer then takes its slices of the mapped tensors; nothing is copied until first use. "
) * 8
TOK_S = 30.0


def fragments(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# -- children -------------------------------------------------------------------------------------------


def child_stream(flush_s: float, seconds: float) -> dict:
    """Feed the real reply widget at TOK_S for `seconds` (flush_s < 0: idle, nothing fed)."""
    from textual.app import App

    from workbench.tui.widgets import chat

    chat.FLUSH_S = max(flush_s, 0.0)
    out: dict = {}

    class Stream(App[None]):
        def compose(self):  # type: ignore[no-untyped-def]
            yield chat.ChatView(id="chat")

        async def on_ready(self) -> None:
            view = self.query_one(chat.ChatView)
            reply = chat.AssistantMessage()
            await view.mount(reply)
            n, start_cpu, start = 0, time.process_time(), time.perf_counter()
            for text in fragments(REPLY):
                if time.perf_counter() - start >= seconds:
                    break
                if flush_s >= 0:
                    reply.add_delta(text)
                    n += 1
                    if reply.due(time.monotonic()):
                        await reply.flush()
                        view.to_bottom()
                await _sleep_until(start + n / TOK_S if flush_s >= 0 else time.perf_counter() + 1 / TOK_S)
            while time.perf_counter() - start < seconds:  # (idle: wait out the window)
                await _sleep_until(time.perf_counter() + 0.05)
            out.update(cpu_s=time.process_time() - start_cpu, wall_s=time.perf_counter() - start, tokens=n)
            self.exit()

    Stream().run(headless=True, size=(100, 40))
    return out


async def _sleep_until(deadline: float) -> None:
    import asyncio

    await asyncio.sleep(max(0.0, deadline - time.perf_counter()))


def child_latency(model: str, repo: str, keys: int) -> dict:
    import asyncio

    from textual import events

    from workbench.tui.app import WorkbenchApp
    from workbench.tui.backend import Backend, LaunchOptions
    from workbench.tui.widgets.prompt import PromptInput

    opts = LaunchOptions(repo=repo, model=model, watch_index=False, allow_tools="none", max_tokens=400,
                         rag=False, temperature=0.0)  # fmt: skip
    app = WorkbenchApp(Backend(opts), Path(repo) / ".wb-data")
    out: dict = {}

    async def type_keys(prompt: PromptInput) -> list[float]:
        waits = []
        for i in range(keys):
            char = "abcdefghij"[i % 10]
            before = len(prompt.text)
            t0 = time.perf_counter()
            app._driver.send_message(events.Key(char, char))  # as the terminal driver does
            while len(prompt.text) == before:
                await asyncio.sleep(0.0005)
            waits.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.1)
        return waits

    async def scenario() -> None:
        async with app.run_test(size=(110, 32)) as pilot:
            screen = app.screen_stack[-1]
            bar = screen.query_one("#status")
            while bar.status.activity != "ready":
                await pilot.pause(0.05)
            prompt = screen.query_one(PromptInput)
            prompt.focus()
            out["idle_ms"] = await type_keys(prompt)
            prompt.load_text("Tell me a long story about the loader.")
            prompt.action_submit()
            while bar.status.activity != "answering":  # the model loads, prefills, then streams
                await pilot.pause(0.02)
            prompt.load_text("")
            out["decode_ms"] = await type_keys(prompt)
            out["still_decoding"] = bar.status.activity == "answering"
            screen.action_cancel()
            while screen.busy:
                await pilot.pause(0.05)
            out["tok_s"] = (screen.turn.result.timings or {}).get("decode_tok_s", 0.0)

    asyncio.run(scenario())
    return out


def child_session(repo: str, session_id: str, pages: int) -> dict:
    import asyncio

    from textual import events

    from workbench.tui.app import WorkbenchApp
    from workbench.tui.backend import Backend, LaunchOptions
    from workbench.tui.widgets.chat import ChatMessage, ChatView, LoadEarlier

    spawned = float(os.environ["WB_SPAWNED"])
    out: dict = {}

    class Timed(WorkbenchApp):
        def on_ready(self) -> None:
            out["first_frame_s"] = time.time() - spawned

    opts = LaunchOptions(repo=repo, model=str(Path(repo) / "no-model"), watch_index=False, resume=session_id)
    app = Timed(Backend(opts), Path(repo) / ".wb-data")

    async def scenario() -> None:
        async with app.run_test(size=(110, 32)) as pilot:
            chat = None
            while chat is None or not chat.query(ChatMessage):
                await asyncio.sleep(0.002)
                chat = next((s.query_one(ChatView) for s in app.screen_stack if s.query(ChatView)), None)
            out["shown_s"] = time.time() - spawned
            if type(app.screen).__name__ == "NoModelScreen":
                await pilot.press("escape")
            loads = []
            while chat.query(LoadEarlier):
                t0 = time.perf_counter()
                chat.query_one(LoadEarlier).post_message(LoadEarlier.Pressed())
                count = len(chat.query(ChatMessage))
                while len(chat.query(ChatMessage)) == count:
                    await asyncio.sleep(0.001)
                loads.append((time.perf_counter() - t0) * 1000)
                await pilot.pause()  # the bar's update or removal, before the next press
            out["load_earlier_ms"], out["messages"] = loads, len(chat.query(ChatMessage))
            await pilot.pause(0.3)
            chat.focus()
            scrolls = []
            for _ in range(pages):
                y, t0 = chat.scroll_y, time.perf_counter()
                app._driver.send_message(events.Key("pageup", None))
                while chat.scroll_y == y and chat.scroll_y > 0:
                    await asyncio.sleep(0.001)
                scrolls.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(0.05)
            out["pageup_ms"] = scrolls

    asyncio.run(scenario())
    return out


# -- parent ---------------------------------------------------------------------------------------------


def spawn(env: dict, *args: str) -> dict:
    env = {**env, "WB_SPAWNED": repr(time.time())}
    cmd = [sys.executable, "-m", "bench.tui_live_bench", "--child", *args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_model(directory: Path) -> None:
    from bench.engine_bench import QWEN3_06B, write_random_checkpoint
    from tests.fixtures.tokenizers import build_tokenizer

    config = {**QWEN3_06B, "vocab_size": 384, "max_position_embeddings": 4096}
    write_random_checkpoint(directory, config)
    build_tokenizer(directory, "qwen3", 384)


def write_session(env: dict, repo: Path, messages: int) -> str:
    """A session of `messages` Markdown messages, written through the session store (embedded Redis)."""
    code = f"""
import json, sys
from core import redis_server
from sessions.model import Message, Session
from sessions.service import SessionService
from bench.tui_live_bench import REPLY
svc = SessionService()
s = svc.store
import time
session = Session(id=__import__('sessions.ids', fromlist=['new_id']).new_id(), title='long session',
                  created=time.time(), updated=time.time(), repo={str(repo)!r}, model='none')
s.create(session)
for i in range({messages} // 2):
    s.append_message(session, Message(role='user', content=f'question {{i}}: where is the loader?'))
    s.append_message(session, Message(role='assistant', content=REPLY[: 600 + 37 * (i % 9)]))
svc.close()
redis_server.stop_embedded()
print(json.dumps(session.id))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"writing the session failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.95 * len(values)))] if values else float("nan")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, *rest = sys.argv[2:]
        if mode == "stream":
            result = child_stream(float(rest[0]), float(rest[1]))
        elif mode == "latency":
            result = child_latency(rest[0], rest[1], int(rest[2]))
        else:
            result = child_session(rest[0], rest[1], int(rest[2]))
        from core import redis_server

        redis_server.stop_embedded()  # (the app's embedded Redis, if it started one)
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter streams, fewer keys")
    args = parser.parse_args()
    seconds, keys, rounds = (4.0, 10, 1) if args.quick else (8.0, 20, 2)
    tmp = Path(tempfile.mkdtemp(prefix="wb-tui-live-"))
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    env.update(WORKBENCH_HOME=str(tmp / "home"), PYTHONPATH=str(ROOT))
    lines = [f"`python -m bench.tui_live_bench{' --quick' if args.quick else ''}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores)", ""]  # noqa: E501

    variants = [("idle app (nothing streamed)", -1.0), ("every fragment", 0.0), ("every 100 ms", 0.1),
                ("every 200 ms (Workbench)", 0.2), ("every 250 ms", 0.25)]  # fmt: skip
    cpu: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for _ in range(rounds):
        for name, flush in variants:
            cpu[name].append(spawn(env, "stream", str(flush), str(seconds)))
    title = f"UI CPU while a reply streams at {TOK_S:.0f} tok/s for {seconds:.0f} s (best of {rounds}):"
    lines += [title, "",
              "| Markdown writes | % of one core | ms CPU per token |", "| --- | ---: | ---: |"]  # fmt: skip
    for name, _ in variants:
        best = min(cpu[name], key=lambda r: r["cpu_s"])
        per_token = f"{1000 * best['cpu_s'] / best['tokens']:.2f}" if best["tokens"] else "–"
        lines.append(f"| {name} | {100 * best['cpu_s'] / best['wall_s']:.0f}% | {per_token} |")

    model, repo = tmp / "model", tmp / "repo"
    build_model(model)
    (repo / ".git").mkdir(parents=True)
    lat = spawn(env, "latency", str(model), str(repo), str(keys))
    lines += ["", f"Input latency, key event to the prompt holding it ({keys} keys, one per 100 ms):", "",
              "| while | p50 ms | p95 ms | max ms |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for label, key in (("idle", "idle_ms"), (f"decoding ({lat['tok_s']:.1f} tok/s)", "decode_ms")):
        v = lat[key]
        lines.append(f"| {label} | {p50(v):.1f} | {p95(v):.1f} | {max(v):.1f} |")
    if not lat["still_decoding"]:
        lines.append("\n(the reply ended before the last key: some keys were typed after decoding)")

    sid = write_session(env, repo, 200)
    sess = [spawn(env, "session", str(repo), sid, "20") for _ in range(rounds)]
    best = min(sess, key=lambda r: r["shown_s"])
    loads, pages = best["load_earlier_ms"], best["pageup_ms"]
    lines += ["", f"A 200-message session opened with --resume (best of {rounds}; {best['messages']} messages"
              " on screen after loading them all):", "", "| | value |", "| --- | ---: |",
              f"| spawn to first frame | {best['first_frame_s']:.3f} s |",
              f"| spawn to the session shown (last 20 messages) | {best['shown_s']:.3f} s |",
              f"| each 'load earlier' (20 messages), p50 / max | {p50(loads):.0f} / {max(loads):.0f} ms |",
              f"| page up through them, p50 / p95 | {p50(pages):.1f} / {p95(pages):.1f} ms |"]  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
