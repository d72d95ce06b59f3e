"""The OpenAI-compatible front door on a real uvicorn server (free loopback port), the tiny Qwen3 fixture,
the suite's redis-server, and the official `openai` client (streaming and not) beside raw bad requests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from serve.completion import Completer
from serve.http import Limits, create_app
from tests.headless_support import chat_model_dir

openai = pytest.importorskip("openai")

KEY = "sk-test-key"
SYSTEM = "You are a careful coding assistant. Answer briefly and cite files. " * 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model_dir(tmp_path_factory.getbasetemp())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def base_url(model_dir: Path, redis_client: object) -> Iterator[str]:
    """A front door serving the tiny model, with an API key, a 64 KiB body limit and 2 requests at once."""
    completer = Completer([str(model_dir)])
    completer.preload()
    app = create_app(completer, Limits(api_key=KEY, max_body=64 << 10, max_concurrent=2))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=20)
    completer.close()


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)


def test_models_lists_what_is_served(base_url: str, model_dir: Path) -> None:
    assert [m.id for m in client(base_url).models.list()] == [str(model_dir)]


def test_chat_completion_whole_and_streamed_say_the_same(base_url: str, model_dir: Path) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is the parser?"}]
    ask = dict(model=str(model_dir), messages=messages, temperature=0, max_tokens=10)
    whole = client(base_url).chat.completions.create(**ask)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 10 and whole.usage.prompt_tokens > 64

    chunks = list(client(base_url).chat.completions.create(**ask, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content  # greedy: the same reply
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    # The second request restored the shared prefix from the KV blocks the first one saved.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 64


def test_two_concurrent_streams_both_run_to_the_end(base_url: str, model_dir: Path) -> None:
    messages = [{"role": "user", "content": "Tell a very long story."}]
    ask = dict(model=str(model_dir), messages=messages, temperature=0, max_tokens=200)
    expected = client(base_url).chat.completions.create(**ask).choices[0].message.content
    both_open = threading.Barrier(2, timeout=30)
    texts: dict[int, tuple[str, str | None]] = {}

    def stream(n: int) -> None:
        chunks = client(base_url).chat.completions.create(**ask, stream=True)
        parts, finish = [next(chunks).choices[0].delta.content or ""], None
        both_open.wait()  # neither is read on until both are open: the second opens mid-way through the first
        for chunk in chunks:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        texts[n] = ("".join(parts), finish)

    threads = [threading.Thread(target=stream, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert texts == {0: (expected, "length"), 1: (expected, "length")}


def test_text_completion(base_url: str, model_dir: Path) -> None:
    done = client(base_url).completions.create(model=str(model_dir), prompt="def parse(", max_tokens=5,
                                                temperature=0)  # fmt: skip
    assert done.object == "text_completion" and done.usage.completion_tokens <= 5
    parts = list(client(base_url).completions.create(model=str(model_dir), prompt="def parse(", max_tokens=5,
                                                      temperature=0, stream=True))  # fmt: skip
    assert "".join(p.choices[0].text for p in parts) == done.choices[0].text


def test_bad_requests_get_openai_shaped_4xx(base_url: str, model_dir: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{base_url}/chat/completions"

    def post(body: bytes | str, headers: dict[str, str] = auth) -> httpx.Response:
        return httpx.post(url, content=body, headers=headers, timeout=30)

    cases = [
        (post("{not json"), 400, "not valid JSON"),
        (post('{"messages": [{"role": "user", "content": "hi"}]}'), 400, "'model' is required"),
        (post('{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}'), 404, "not served here"),
        (post(f'{{"model": "{model_dir}", "messages": []}}'), 400, "'messages'"),
        (post(f'{{"model": "{model_dir}", "messages": [{{"role": "user"}}], "temperature": 9}}'),
         400, "'temperature'"),
        (post("{}", headers={"Content-Type": "application/json"}), 401, "API key"),
        (post("x" * (65 << 10)), 413, "body over"),
        (httpx.get(f"{base_url}/nothing", headers=auth), 404, "no such endpoint"),
    ]  # fmt: skip
    for response, status, words in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert words in error["message"] and set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        client(base_url).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_past_the_concurrency_limit_requests_get_429(base_url: str, model_dir: Path) -> None:
    # Greedy replies of this fixture to this prompt run to max_tokens (seed 3, tests/headless_support.py).
    story = [{"role": "user", "content": "Tell a very long story."}]
    ask = {"model": str(model_dir), "messages": story, "temperature": 0, "max_tokens": 3000}
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{base_url}/chat/completions"
    codes: list[int] = []

    def long_request() -> None:
        codes.append(httpx.post(url, json=ask, headers=auth, timeout=120).status_code)

    both = [threading.Thread(target=long_request) for _ in range(2)]
    for thread in both:
        thread.start()
    time.sleep(0.5)  # both are in progress: one generating, one queued behind it on the engine thread
    third = httpx.post(url, json=ask, headers=auth, timeout=30)
    assert third.status_code == 429 and third.json()["error"]["code"] == "busy", third.text
    for thread in both:
        thread.join(timeout=120)
    assert codes == [200, 200]
    # Their slots came back.
    assert httpx.post(url, json={**ask, "max_tokens": 2}, headers=auth, timeout=30).status_code == 200


def test_the_cli_refuses_a_public_bind_without_a_key_and_a_bad_bind() -> None:
    from tests.headless_support import workbench

    public = workbench("serve", "--http", "0.0.0.0:8080")
    assert public.code == 2 and "not a loopback address: give --api-key" in public.stderr
    bad = workbench("serve", "--http", "localhost")
    assert bad.code == 2 and "--http wants HOST:PORT" in bad.stderr
    none = workbench("serve", "--concurrency", "0")
    assert none.code == 2 and "--concurrency must be >= 1, got 0" in none.stderr
