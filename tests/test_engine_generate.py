"""engine.generate on the tiny fixture models: greedy parity with transformers, stops, cancel, cache reuse.

Needs the `tiny_model` fixture of tests/fixtures/tiny_models.py (registered in tests/conftest.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import engine
from engine.detok import ReasoningSplitter
from engine.errors import ContextLengthError, EngineError
from engine.generate import Delta, GenerationResult, StopStringFilter, _prompt_opens_reasoning
from tests.fixtures.tiny_models import GREEDY_TOKENS, TinyModel

TinyModels = Callable[[str], TinyModel]
GREEDY = engine.SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS)


def run(model: engine.Model, prompt: list[int], params: engine.SamplingParams, **kwargs):
    events = list(engine.generate(model, prompt, params, **kwargs))
    *deltas, result = events
    assert all(isinstance(d, Delta) for d in deltas) and isinstance(result, GenerationResult)
    return deltas, result


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """transformers' greedy continuation, cut after the first EOS as generate() stops there."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


@pytest.fixture(scope="module")
def qwen3(tiny_model: TinyModels) -> tuple[TinyModel, engine.Model]:
    fixture = tiny_model("qwen3")
    return fixture, engine.load_model(fixture.path, backend="numpy")


@pytest.mark.parametrize("name", ["qwen3", "qwen2", "llama3_classic"])
def test_greedy_matches_transformers(tiny_model: TinyModels, name: str):
    fixture = tiny_model(name)
    model = engine.load_model(fixture.path, backend="numpy")
    expected = until_eos(fixture.greedy, model.tokenizer.eos_token_ids)
    deltas, result = run(model, fixture.prompt, GREEDY)
    assert result.token_ids == expected
    assert result.finish_reason == ("stop" if len(expected) < GREEDY_TOKENS else "length")
    assert result.prompt_tokens == result.prefilled_tokens == len(fixture.prompt)
    assert result.generated_tokens == len(expected)
    text_ids = [t for t in expected if t not in model.tokenizer.eos_token_ids]
    assert "".join(d.text for d in deltas) == result.text == model.tokenizer.decode(text_ids)
    streamed_ids = [t for d in deltas for t in d.token_ids]
    assert streamed_ids == result.token_ids[: len(streamed_ids)]
    assert [d.t for d in deltas] == sorted(d.t for d in deltas)
    assert result.ttft_s > 0 and result.prefill_tok_s > 0


def test_generate_is_backend_agnostic(qwen3):
    pytest.importorskip("mlx.core")
    fixture, _ = qwen3
    model = engine.load_model(fixture.path, backend="mlx")
    _, result = run(model, fixture.prompt, GREEDY)
    assert result.token_ids == until_eos(fixture.greedy, model.tokenizer.eos_token_ids)


def test_cache_holds_prompt_and_all_but_the_last_token(qwen3):
    fixture, model = qwen3
    cache = model.make_cache()
    _, result = run(model, fixture.prompt, engine.SamplingParams(max_tokens=5), cache=cache)
    assert result.finish_reason == "length" and len(result.token_ids) == 5
    assert cache.offset == len(fixture.prompt) + 4


def test_restored_cache_prefills_only_the_rest(qwen3):
    fixture, model = qwen3
    prompt = fixture.prompt
    expected = until_eos(fixture.greedy, model.tokenizer.eos_token_ids)

    partial = model.make_cache()
    model.forward(prompt[:30], partial)
    _, result = run(model, prompt, GREEDY, cache=partial)
    assert result.prefilled_tokens == len(prompt) - 30
    assert result.token_ids == expected

    full = model.make_cache()
    last_logits = model.forward(prompt, full)
    _, result = run(model, prompt, GREEDY, cache=full, last_logits=last_logits)
    assert result.prefilled_tokens == 0
    assert result.token_ids == expected

    # Without the stored logits the last prompt position is trimmed and recomputed.
    full = model.make_cache()
    model.forward(prompt, full)
    _, result = run(model, prompt, GREEDY, cache=full)
    assert result.prefilled_tokens == 1
    assert result.token_ids == expected


def test_cache_longer_than_prompt_is_refused(qwen3):
    fixture, model = qwen3
    cache = model.make_cache()
    model.forward(fixture.prompt, cache)
    with pytest.raises(EngineError, match="holds 40 positions but the prompt has only 10"):
        next(engine.generate(model, fixture.prompt[:10], GREEDY, cache=cache))


def test_max_tokens(qwen3):
    fixture, model = qwen3
    for n in (1, 3):
        _, result = run(model, fixture.prompt, engine.SamplingParams(max_tokens=n))
        assert result.generated_tokens == n and result.finish_reason in ("length", "stop")


def _printable_stop(text: str) -> tuple[str, int]:
    """A 2-character stop string from the middle of `text` (no U+FFFD), and where it first occurs."""
    for start in range(len(text) // 3, len(text) - 2):
        stop = text[start : start + 2]
        if "\ufffd" not in stop and text.find(stop) == start:
            return stop, start
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_string_ends_generation_and_is_not_emitted(qwen3):
    fixture, model = qwen3
    _, full = run(model, fixture.prompt, GREEDY)
    stop, at = _printable_stop(full.text)
    deltas, result = run(model, fixture.prompt, engine.SamplingParams(max_tokens=GREEDY_TOKENS, stop=[stop]))
    assert result.finish_reason == "stop_string"
    assert result.text == full.text[:at]
    assert "".join(d.text for d in deltas) == full.text[:at]
    assert result.token_ids == full.token_ids[: len(result.token_ids)]
    assert len(result.token_ids) < len(full.token_ids)


def test_stop_string_filter_holds_back_possible_prefixes():
    f = StopStringFilter(["END", "STOP"])
    assert f.feed("abc E") == "abc "  # "E" may start END
    assert f.feed("x S") == "Ex "
    assert f.feed("TO") == ""
    assert f.feed("P tail") == ""  # STOP matched: nothing more is emitted
    assert f.stopped
    g = StopStringFilter(["END"])
    assert g.feed("the EN") == "the "
    assert g.flush() == "EN"  # stream ended without a match: the held text is released


def test_cancel_from_another_thread_stops_within_one_step(qwen3):
    fixture, model = qwen3
    cancel = threading.Event()
    asked, done = threading.Event(), threading.Event()

    def canceller() -> None:
        asked.wait(10)
        cancel.set()
        done.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    seen: list[int] = []
    result = None
    for event in engine.generate(model, fixture.prompt, engine.SamplingParams(max_tokens=80), cancel=cancel):
        if isinstance(event, GenerationResult):
            result = event
            break
        seen.extend(event.token_ids)
        if len(seen) >= 3 and not asked.is_set():
            asked.set()
            assert done.wait(10)  # the generator stays suspended here until the other thread cancelled
    thread.join(10)
    assert result is not None and result.finish_reason == "cancelled"
    # Not one more token was sampled after the cancel became visible.
    assert result.generated_tokens == len(result.token_ids) == len(seen)


def test_cancel_before_start_skips_prefill(qwen3):
    fixture, model = qwen3
    cancel = threading.Event()
    cancel.set()
    deltas, result = run(model, fixture.prompt, GREEDY, cancel=cancel)
    assert deltas == [] and result.finish_reason == "cancelled" and result.generated_tokens == 0


class CancelAfter:
    """A cancel event that turns on after `n` checks: it lands wherever the n-th check is."""

    def __init__(self, n: int) -> None:
        self.checks, self.n = 0, n

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.n


def test_cancel_lands_between_the_layers_of_a_prefill(qwen3, monkeypatch: pytest.MonkeyPatch):
    fixture, model = qwen3
    assert model.config.num_hidden_layers == 3  # two checks inside each chunk (before layers 1 and 2)
    monkeypatch.setattr(model, "prefill_chunk", 4)  # the prompt takes several chunks
    cache = model.make_cache()
    cancel = CancelAfter(4)  # check 1: before the first chunk; 2-3: its layers; 4: the next chunk's start
    deltas, result = run(model, fixture.prompt, GREEDY, cancel=cancel, cache=cache)
    assert deltas == [] and result.finish_reason == "cancelled"
    assert cancel.checks == 5  # it stopped at the first check that said yes, inside the second chunk
    assert cache.offset == 4 and cache.lengths == [4] * len(cache.lengths)  # chunk 1 kept, chunk 2 undone
    _, resumed = run(model, fixture.prompt, GREEDY, cache=cache)  # picks up where the cancel left it
    _, fresh = run(model, fixture.prompt, GREEDY)
    assert resumed.token_ids == fresh.token_ids


def test_context_length_error_names_the_limit(qwen3):
    fixture, model = qwen3
    limit = model.config.max_position_embeddings
    with pytest.raises(ContextLengthError, match=rf"exceeds the model's context of {limit} tokens"):
        next(engine.generate(model, fixture.prompt, engine.SamplingParams(max_tokens=limit)))
    with pytest.raises(ContextLengthError, match="shorten the prompt"):
        next(engine.generate(model, [1] * (limit + 1), engine.SamplingParams(max_tokens=1)))


def test_bad_prompts_are_refused(qwen3):
    _, model = qwen3
    with pytest.raises(EngineError, match="empty prompt"):
        next(engine.generate(model, [], GREEDY))
    with pytest.raises(EngineError, match="outside the vocabulary"):
        next(engine.generate(model, [1, 2, model.config.vocab_size], GREEDY))


def test_seeded_sampling_is_reproducible(qwen3):
    fixture, model = qwen3
    params = engine.SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_tokens=16)
    assert run(model, fixture.prompt, params)[1].token_ids == run(model, fixture.prompt, params)[1].token_ids


def test_reasoning_split_in_generation(qwen3):
    _, model = qwen3
    tok = model.tokenizer
    base = tok.render_chat([{"role": "user", "content": "hi"}], enable_thinking=True)
    # A prompt that opens the block (as thinking-only templates do): the reply starts as reasoning.
    prompt = tok.encode(base + "<think>\n")
    assert _prompt_opens_reasoning(tok, prompt, ReasoningSplitter())
    assert not _prompt_opens_reasoning(
        tok, tok.encode(tok.render_chat([{"role": "user", "content": "hi"}])), ReasoningSplitter()
    )
    deltas, result = run(model, prompt, engine.SamplingParams(max_tokens=24), reasoning=True)
    kinds = {d.kind for d in deltas}
    assert kinds <= {"reasoning", "answer"}
    assert "".join(d.text for d in deltas if d.kind == "reasoning") == result.reasoning
    assert "".join(d.text for d in deltas if d.kind == "answer") == result.text
    # Same split as running the splitter over the full decode of the reply.
    text_ids = [t for t in result.token_ids if t not in tok.eos_token_ids]
    splitter = ReasoningSplitter(in_reasoning=True)
    parts = splitter.feed(tok.decode(text_ids)) + splitter.flush()
    assert result.reasoning == "".join(t for k, t in parts if k == "reasoning")
    assert result.text == "".join(t for k, t in parts if k == "answer")
    assert result.reasoning  # the random model's reply is (mostly) inside the opened block


def test_reasoning_off_streams_everything_as_answer(qwen3):
    _, model = qwen3
    prompt = model.tokenizer.encode(
        model.tokenizer.render_chat([{"role": "user", "content": "hi"}]) + "<think>"
    )
    deltas, result = run(model, prompt, engine.SamplingParams(max_tokens=8))
    assert {d.kind for d in deltas} <= {"answer"} and result.reasoning == ""
