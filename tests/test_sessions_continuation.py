"""A turn extends the tokens the model saw and produced, so the previous reply's KV blocks are reused.

Qwen3's template renders a past reply without the empty think block its generation prompt had, so a
plain re-render would diverge at the start of the previous reply and recompute it every turn.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from sessions import SessionService, TurnOptions
from sessions.events import Result
from sessions.model import Message
from sessions.prompt import build_prompt

BLOCK = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Qwen3 whose greedy reply to PROMPT ends with its end-of-turn token after ~70 tokens."""
    from tests.fixtures.tiny_models import _SMALL, Spec, build_spec

    spec = Spec("qwen3", "qwen3", "v5", tied=False, sizes={**_SMALL, "max_position_embeddings": 4096})
    return build_spec("qwen3_continuation", spec, tmp_path_factory.mktemp("models"), seed=2).path


PROMPT = "Tell me everything."


@pytest.fixture
def svc(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> SessionService:
    monkeypatch.setenv("WORKBENCH_KV_BLOCK_SIZE", str(BLOCK))
    service = SessionService(redis_client)
    yield service
    service.close()


def run(svc: SessionService, session_id: str | None, prompt: str, **options: object) -> Result:
    events = list(svc.start_turn(session_id, prompt, TurnOptions(**options)))
    assert isinstance(events[-1], Result) and not events[-1].is_error, events[-1]
    return events[-1]


def test_the_previous_reply_is_reused_and_the_answer_equals_a_full_recompute(
    svc: SessionService, model_dir: Path
) -> None:
    first = run(svc, None, PROMPT, model=str(model_dir), repo=str(model_dir), temperature=0.0,
                max_tokens=400, rag=False)  # fmt: skip
    assert first.finish_reason == "stop" and first.tokens["generated"] > 2 * BLOCK
    reference = svc.fork(first.session_id, title="reference")

    second = run(svc, first.session_id, "And then?", max_tokens=12)
    recomputed = run(svc, reference.id, "And then?", max_tokens=12, no_cache=True)

    # The whole first turn (prompt + reply, all but the unfed end-of-turn token) is in cached blocks.
    seen = first.tokens["prompt"] + first.tokens["generated"] - 1
    assert second.tokens["cached"] >= seen // BLOCK * BLOCK > first.tokens["prompt"]
    assert second.text == recomputed.text and second.tokens["prompt"] == recomputed.tokens["prompt"]
    history = svc.show(first.session_id).history
    assert history[:seen] == svc.show(reference.id).history[:seen]


def test_a_length_cut_reply_is_continued_whole_and_answers_as_a_full_recompute(
    svc: SessionService, model_dir: Path
) -> None:
    first = run(svc, None, PROMPT, model=str(model_dir), repo=str(model_dir), temperature=0.0,
                max_tokens=40, rag=False)  # fmt: skip
    assert first.finish_reason == "length"
    history = svc.show(first.session_id).history
    # Every token the cut reply produced is in the history (the last one was fed to the cache too).
    assert len(history) == first.tokens["prompt"] + first.tokens["generated"]
    reference = svc.fork(first.session_id, title="reference")

    second = run(svc, first.session_id, "And then?", max_tokens=12)
    recomputed = run(svc, reference.id, "And then?", max_tokens=12, no_cache=True)
    assert second.tokens["cached"] == len(history)  # the whole previous history, not a re-render
    assert second.text == recomputed.text and second.tokens["prompt"] == recomputed.tokens["prompt"]


def test_a_cancelled_reply_is_kept_and_reused(svc: SessionService, model_dir: Path) -> None:
    turn = svc.start_turn(None, PROMPT, TurnOptions(model=str(model_dir), temperature=0.0, max_tokens=400,
                                                    rag=False))  # fmt: skip
    deltas = 0
    for event in turn:
        deltas += event.type == "delta"
        if deltas == 12:
            turn.cancel()
    first = turn.result
    assert first.finish_reason == "cancelled" and first.text
    history = svc.show(first.session_id).history
    second = run(svc, first.session_id, "And then?", max_tokens=8)
    assert second.tokens["cached"] == len(history) > first.tokens["prompt"]


def test_a_cut_reply_is_closed_with_the_templates_end_of_turn_text(model_dir: Path) -> None:
    import engine

    tok = engine.load_model(model_dir).tokenizer
    user = Message(role="user", content=PROMPT)
    first = build_prompt(tok, None, [user], thinking=False)
    reply_ids = tok.encode("a reply that was cut short")
    cut = Message(role="assistant", content=tok.decode(reply_ids), finish_reason="length")
    history = first.token_ids + reply_ids
    follow = Message(role="user", content="And then?")

    canonical = build_prompt(tok, None, [user, cut, follow], thinking=False)
    continued = build_prompt(tok, None, [user, cut, follow], False, history=history)
    assert continued.token_ids[: len(history)] == history and continued != canonical
    suffix = continued.token_ids[len(history) :]
    assert suffix[0] in tok.eos_token_ids  # the template's end-of-turn closes the cut reply
    assert continued.text.endswith(canonical.text[canonical.text.rindex(cut.content) + len(cut.content) :])
    # A reply ended by a stop string has tokens the text lacks: it is re-rendered.
    stopped = Message(role="assistant", content=cut.content, finish_reason="stop_string")
    assert build_prompt(tok, None, [user, stopped, follow], False, history=history) == build_prompt(
        tok, None, [user, stopped, follow], thinking=False
    )
    # Another system prompt than the history was made with: the history is not reused.
    changed = build_prompt(tok, "Be terse.", [user, cut, follow], False, history=history)
    assert changed == build_prompt(tok, "Be terse.", [user, cut, follow], thinking=False)


def test_a_third_turn_still_extends_the_whole_history(svc: SessionService, model_dir: Path) -> None:
    first = run(svc, None, PROMPT, model=str(model_dir), repo=str(model_dir), temperature=0.0,
                max_tokens=60, rag=False)  # fmt: skip
    run(svc, first.session_id, "And then?", max_tokens=12)
    history = svc.show(first.session_id).history
    turn = svc.start_turn(first.session_id, "And after that?", TurnOptions(max_tokens=8))
    cache = next(e for e in turn if e.type == "cache")
    assert cache.cache_bust is None and cache.cached_tokens == len(history)
    assert not turn.wait().is_error
