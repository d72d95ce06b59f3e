"""Engine workers fed through a Redis Stream: request in, the turn's events out, exactly one answer.

Real components: the suite's redis-server, the tiny Qwen3 fixture, and `workbench serve` subprocesses
for the worker-kill case.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.errors import UsageError
from core.lease import lease_key
from serve import protocol
from serve.client import start_remote_turn
from serve.protocol import GROUP, REQUESTS, Request, ServerBusy
from serve.remote import RemoteSessionService
from serve.worker import Worker
from sessions import SessionService, TurnOptions
from sessions.events import ModelLoading, Queued, Result, SessionStarted, TextDelta
from sessions.model import Message
from tests.headless_support import ROOT, chat_model_dir, command, env, workbench


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model_dir(tmp_path_factory.getbasetemp())


@pytest.fixture
def worker(redis_client: redis.Redis) -> Iterator[Worker]:
    """One in-process worker serving on a thread until the test ends."""
    svc = SessionService(redis_client)
    w = Worker(redis_client, svc, name="test-worker", claim_idle_ms=60_000, block_ms=100)
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    yield w
    stop.set()
    thread.join(timeout=60)  # a worker left running would take the next test's requests
    assert not thread.is_alive(), "the in-process worker did not stop within 60 s"
    svc.close()


def options(model_dir: Path, **extra: object) -> dict[str, object]:
    return {"model": str(model_dir), "repo": str(model_dir), "rag": False, "temperature": 0.0,
            "max_tokens": 8, **extra}  # fmt: skip


def reply_events(r: redis.Redis, request_id: str) -> list[dict]:
    return [json.loads(f[b"event"]) for _, f in r.xrange(protocol.reply_key(request_id))]


def test_a_request_is_answered_with_the_stream_json_events_and_acked(
    redis_client: redis.Redis, worker: Worker, model_dir: Path
) -> None:
    turn = start_remote_turn(redis_client, "Where is the parser?", options=options(model_dir))
    events = [e.to_dict() for e in turn]
    # The service's progress events (queued, model_loading, prefill, ...) are forwarded as they are.
    progress = {"queued", "model_loading", "index_progress", "prefill"}
    assert "queued" in {e["type"] for e in events}
    types = [e["type"] for e in events if e["type"] not in progress]
    assert types[:3] == ["session", "retrieval", "cache"] and types[-1] == "result"
    assert set(types[3:-1]) <= {"delta"}
    result = events[-1]
    assert not result["is_error"] and result["tokens"]["generated"] == 8
    assert "".join(e["text"] for e in events if e["type"] == "delta") == result["text"]
    # Acked and removed from the queue; the result recorded under the request id.
    assert redis_client.xlen(REQUESTS) == 0
    assert redis_client.xpending(REQUESTS, GROUP)["pending"] == 0
    assert json.loads(redis_client.get(protocol.done_key(turn.request.id)))["text"] == result["text"]

    # A second turn names the session: it continues it (the worker resolves the id).
    again = start_remote_turn(redis_client, "And the tests?", session=result["session_id"],
                              options={"max_tokens": 4})  # fmt: skip
    second = [e.to_dict() for e in again][-1]
    assert second["session_id"] == result["session_id"] and second["message"] == 4


def test_a_worker_runs_requests_side_by_side_and_keeps_waiting_ones_its_own(
    redis_client: redis.Redis, model_dir: Path
) -> None:
    svc = SessionService(redis_client)
    busy = Worker(redis_client, svc, name="busy", claim_idle_ms=600, block_ms=100, concurrency=2)
    stop = threading.Event()
    thread = threading.Thread(target=busy.run, args=(stop,), daemon=True)
    thread.start()
    try:
        story = start_remote_turn(
            redis_client, "Tell a very long story.", None, options(model_dir, max_tokens=400)
        )
        hello = start_remote_turn(redis_client, "hello", None, options(model_dir))
        stolen = []
        deadline = time.monotonic() + 60
        while not redis_client.exists(protocol.done_key(hello.request.id)) and time.monotonic() < deadline:
            # Another worker looking for requests idle past the claim timeout: "hello" waits behind the
            # story on the engine, sending no event, and must still not look abandoned (heartbeats).
            stolen += redis_client.xautoclaim(REQUESTS, GROUP, "thief", min_idle_time=600, count=10)[1]
            time.sleep(0.1)
        assert stolen == []
        first_of_hello = redis_client.xrange(protocol.reply_key(hello.request.id), count=1)[0][0]
        story_result = redis_client.xrevrange(protocol.reply_key(story.request.id), count=1)[0][0]
        assert first_of_hello < story_result  # taken while the story still ran
        assert [e.to_dict() for e in hello][-1]["finish_reason"] in ("stop", "length")
    finally:
        stop.set()
        thread.join(timeout=30)
        svc.close()


def test_a_request_delivered_twice_is_answered_once(
    redis_client: redis.Redis, worker: Worker, model_dir: Path
) -> None:
    turn = start_remote_turn(redis_client, "Hello", options=options(model_dir))
    first = [e.to_dict() for e in turn][-1]
    protocol.submit(redis_client, turn.request)  # the same id again (a client retrying)
    deadline = time.monotonic() + 10
    while redis_client.xlen(REQUESTS) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_client.xlen(REQUESTS) == 0
    results = [e for e in reply_events(redis_client, turn.request.id) if e["type"] == "result"]
    assert results == [first]


def test_bad_requests_get_an_error_result_naming_the_fault(
    redis_client: redis.Redis, worker: Worker, model_dir: Path
) -> None:
    redis_client.xadd(REQUESTS, {"id": "bad-json", "prompt": "hi", "options": "{not json"})
    bad = protocol.replies(redis_client, "bad-json", timeout_s=10)
    result = list(bad)[-1]
    assert result["is_error"] and result["exit_code"] == 2 and "'options' is not JSON" in result["error"]

    turn = start_remote_turn(redis_client, "hi", options={"colour": "red"})
    result = [e.to_dict() for e in turn][-1]
    assert "unknown option(s) colour" in result["error"]

    turn = start_remote_turn(redis_client, "hi", session="zzzzzzzz", options=options(model_dir))
    result = [e.to_dict() for e in turn][-1]
    assert result["is_error"] and result["exit_code"] == 3


def test_past_the_queue_bound_a_submitter_is_told_busy(redis_client: redis.Redis) -> None:
    for n in range(3):
        protocol.submit(redis_client, Request(f"r{n}", "hi"), max_queue=3)
    with pytest.raises(ServerBusy, match=r"busy: the request queue .* holds 3 requests"):
        protocol.submit(redis_client, Request("r3", "hi"), max_queue=3)
    assert redis_client.xlen(REQUESTS) == 3


def _serve(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command("serve", "--name", name, "--claim-idle-ms", "1000"),
        cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_a_remote_cancel_stops_the_turn_on_the_worker(
    worker: Worker, redis_client: redis.Redis, model_dir: Path
) -> None:
    turn = start_remote_turn(
        redis_client, "Tell a very long story.", None, options(model_dir, max_tokens=3000)
    )
    events, cancelled_at = [], None
    for event in turn:
        events.append(event.to_dict())
        if event.to_dict()["type"] == "delta" and cancelled_at is None:
            cancelled_at = time.monotonic()
            turn.cancel()
    result = events[-1]
    # The worker stopped generating (not just the caller reading): a cancelled result, soon, far short.
    assert (
        result["type"] == "result" and result["finish_reason"] == "cancelled" and result["exit_code"] == 130
    )
    assert time.monotonic() - cancelled_at < 3 and result["tokens"]["generated"] < 300
    with SessionService(redis_client) as svc:
        recorded = svc.show(result["session_id"]).messages
    assert [m.status for m in recorded] == ["complete", "interrupted"]
    assert not redis_client.exists(protocol.cancel_key(turn.request.id))
    # The worker is free for the next request at once.
    nxt = start_remote_turn(redis_client, "hello", None, options(model_dir))
    assert [e.to_dict() for e in nxt][-1]["finish_reason"] in ("stop", "length")


def test_a_request_cancelled_while_queued_is_answered_without_running(
    redis_client: redis.Redis, model_dir: Path
) -> None:
    with SessionService(redis_client) as svc:
        idle = Worker(redis_client, svc, name="idle", block_ms=100)
        turn = start_remote_turn(redis_client, "never run", None, options(model_dir))
        protocol.request_cancel(redis_client, turn.request.id)
        assert idle.step()
        assert svc.list() == []  # no session was created
    assert [e.to_dict() for e in turn][-1]["finish_reason"] == "cancelled"


def test_the_remote_session_service_runs_turns_on_the_workers(
    worker: Worker, redis_client: redis.Redis, model_dir: Path
) -> None:
    remote = RemoteSessionService(redis_client)
    ask = TurnOptions(**options(model_dir), allow_tools="read")  # tools are not sent: a plain turn
    turn = remote.start_turn(None, "Where is the parser?", ask)
    events = list(turn)
    result = turn.result
    assert isinstance(result, Result) and not result.is_error, result
    assert isinstance(next(e for e in events if not isinstance(e, Queued | ModelLoading)), SessionStarted)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == result.text
    sid = result.session_id
    assert remote.list()[0].id == sid and remote.show(sid[:10]).message_count == 2
    assert remote.open(sid).messages[-1].content == result.text and remote.warm(sid).result() is None
    # The next turn resumes the session; read the way the TUI reads (async).
    second = asyncio.run(remote.start_turn(sid, "And the tests?", TurnOptions(max_tokens=4)).wait_async())
    assert second.session_id == sid and second.message == 4
    story = remote.start_turn(sid, "Tell a very long story.", TurnOptions(max_tokens=3000))
    for event in story:
        if isinstance(event, TextDelta):
            story.cancel()  # reaches the worker, which answers with a cancelled result
    assert story.result.finish_reason == "cancelled" and story.result.tokens["generated"] < 300
    with pytest.raises(UsageError, match="through the workers"):
        remote.rename(sid, "elsewhere")
    assert remote.close()


def test_a_rerun_answers_the_recorded_prompt_without_recording_it_again(
    redis_client: redis.Redis, model_dir: Path
) -> None:
    with SessionService(redis_client) as svc:
        first = svc.start_turn(None, "Where is the parser?", TurnOptions(**options(model_dir))).wait()
        sid = first.session_id
        # What a worker that died right after recording the prompt leaves: the prompt, unanswered.
        svc.store.append_message(svc.store.load(sid), Message(role="user", content="And the tests?"))
        rerun = svc.start_turn(sid, "And the tests?", TurnOptions(max_tokens=4, rerun=True)).wait()
        assert not rerun.is_error and rerun.message == 4
        # A rerun whose prompt is not the one recorded last is an ordinary turn.
        other = svc.start_turn(sid, "Something else", TurnOptions(max_tokens=4, rerun=True)).wait()
        assert other.message == 6
        contents = [m.content for m in svc.show(sid).messages]
    assert contents[2::2] == ["And the tests?", "Something else"] and len(contents) == 6


def test_a_rerun_waits_out_the_lease_a_dead_worker_on_another_host_left(
    redis_client: redis.Redis, model_dir: Path
) -> None:
    with SessionService(redis_client) as svc:
        sid = (
            svc.start_turn(None, "Where is the parser?", TurnOptions(**options(model_dir))).wait().session_id
        )
        svc.close_session(sid)
        # The state a worker on another host leaves when it dies mid-request: its attempt counted, its
        # lease on the session running out (1.5 s here; 15 s in life).
        request = Request("from-elsewhere", "And the tests?", sid, {"max_tokens": 4})
        protocol.submit(redis_client, request)
        redis_client.hset(protocol.run_key(request.id), "attempts", 1)
        holder = {"pid": 1, "host": "another-host", "token": "t", "since": time.time(), "ttl_s": 1.5}
        redis_client.set(lease_key(sid), json.dumps(holder), px=1500)
        worker = Worker(redis_client, svc, name="here", block_ms=100)
        t0 = time.monotonic()
        assert worker.step()
        result = reply_events(redis_client, request.id)[-1]
        assert not result["is_error"] and result["message"] == 4, result  # not "session in use"
        assert time.monotonic() - t0 > 1.0  # it waited for the lease to run out
        assert [m.content for m in svc.show(sid).messages][2] == "And the tests?"


def test_a_killed_workers_request_is_finished_by_another_exactly_once(
    redis_client: redis.Redis, model_dir: Path
) -> None:
    first = _serve("w1")
    second: subprocess.Popen[bytes] | None = None
    try:
        request = Request("long-one", "Tell a very long story.", None, options(model_dir, max_tokens=3000))
        protocol.submit(redis_client, request)
        seen: list[dict] = []
        first_delta = None
        for event in protocol.replies(redis_client, request.id, timeout_s=60):
            seen.append(event)
            if event["type"] == "delta":
                first_delta = first_delta or time.monotonic()
                if time.monotonic() - first_delta > 1.2:  # past the first partial records of the reply
                    break
        assert seen[-1]["type"] == "delta", seen
        first.send_signal(signal.SIGKILL)  # mid-reply: the request stays pending in w1's name
        first.wait(timeout=10)
        assert redis_client.xpending(REQUESTS, GROUP)["pending"] == 1
        second = _serve("w2")
        events = list(protocol.replies(redis_client, request.id, timeout_s=60))
        everything = reply_events(redis_client, request.id)
        results = [e for e in everything if e["type"] == "result"]
        assert len(results) == 1 and not results[0]["is_error"], results
        requeued = [e for e in everything if e["type"] == "requeued"]
        assert requeued and requeued[0]["attempt"] == 2 and requeued[0]["worker"] == "w2"
        # The re-run continued the session the first attempt had recorded, not a new one.
        started = next(e for e in seen if e["type"] == "session")
        assert results[0]["session_id"] == started["session_id"]
        assert events[-1] == results[0]
        assert redis_client.xlen(REQUESTS) == 0
        # The session holds the prompt once, and the re-run's reply in the place of the interrupted one.
        with SessionService(redis_client) as svc:
            recorded = svc.show(started["session_id"])
        assert [(m.role, m.status) for m in recorded.messages] == [
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        assert (
            recorded.messages[0].content == request.prompt
            and recorded.messages[1].content == results[0]["text"]
        )
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)


def test_cli_remote_runs_the_turn_on_a_worker(redis_client: redis.Redis, model_dir: Path) -> None:
    server = _serve("cli")
    try:
        args = ["--model", str(model_dir), "--no-rag", "--temperature", "0", "--max-tokens", "6"]
        run = workbench("-p", "Where is the parser?", "--remote", "--output-format", "json", *args)
        assert run.code == 0, run
        result = run.json()
        assert result["session_id"] and result["tokens"]["generated"] == 6 and not result["is_error"]
        again = workbench("--resume", result["session_id"], "-p", "more", "--remote", "--max-tokens", "3")
        assert again.code == 0 and again.stdout.strip(), again
        cont = workbench("--continue", "-p", "more", "--remote")
        assert cont.code == 2 and "--resume" in cont.stderr
    finally:
        server.terminate()
        server.wait(timeout=20)
