"""The HTTP door's KV blocks: pinned for the latest conversations, so `cache gc` keeps what editors
resend and drops what nobody asked for since (serve/pins.py)."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from serve.completion import Completer, CompletionJob, Finished
from tests.headless_support import chat_model_dir

SYSTEM = "You are a careful coding assistant. Answer briefly and cite files. " * 8
GREEDY = {"temperature": 0.0, "top_p": 1.0, "seed": None, "max_tokens": 4, "stop": []}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model_dir(tmp_path_factory.getbasetemp())


def complete(completer: Completer, text: str) -> Finished:
    done: queue.Queue = queue.Queue()

    def emit(event: object) -> None:
        if isinstance(event, Finished | Exception):
            done.put(event)

    completer.submit(CompletionJob(completer.models[0], lambda tok: tok.encode(text), GREEDY, emit))
    finished = done.get(timeout=60)
    assert isinstance(finished, Finished), finished
    return finished


def test_the_latest_conversations_stay_pinned_and_gc_drops_the_rest(
    model_dir: Path, redis_client: object
) -> None:
    completer = Completer([str(model_dir)], pin_recent=2)
    try:
        first = SYSTEM + "User: where is the parser?"
        complete(completer, first)
        complete(completer, first + " Assistant: in parse.py. User: and the tests?")
        assert len(completer.pins.holders()) == 1  # the follow-up replaced its conversation's pin
        other = "A different conversation about build scripts and their flags. " * 6
        third = "Yet another one: release notes for version two of the tool. " * 6
        complete(completer, other)
        complete(completer, third)
        assert len(completer.pins.holders()) == 2  # the first conversation fell out (keep 2)

        store = completer._block_store()
        removed = store.gc(grace_s=0)  # idle or not: only the pins protect blocks here
        assert sum(removed.values()) > 0
        assert complete(completer, other).cached_tokens >= store.block_size  # kept: still reused
        assert complete(completer, first).cached_tokens == 0  # dropped: computed again
    finally:
        completer.close()


def test_a_restarted_door_adopts_its_pins_and_trims_them(model_dir: Path, redis_client: object) -> None:
    completer = Completer([str(model_dir)], pin_recent=3)
    try:
        for n in range(3):
            complete(completer, f"Conversation number {n} about a different subject. " * 6)
        holders = completer.pins.holders()
    finally:
        completer.close()
    again = Completer([str(model_dir)], pin_recent=1)
    try:
        complete(again, "One more. " * 40)
        assert len(again.pins.holders()) == 1
        refs = again._block_store().refs.holders()
        assert not set(holders) & set(refs)  # the earlier run's pins were trimmed, not left forever
    finally:
        again.close()
