"""The loop on a real tiny engine model (real template with tools, tokenizer, prefill, decode, KV cache).

`Steered` (tests/agent_support.py) makes the random-weight model's greedy replies given texts, through its
real forward passes; everything else (the cache, what is prefilled, the template) is the engine's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import engine
from agent.cachebust import diagnose
from agent.confine import Confinement
from agent.loop import LoopResult, run_loop
from agent.policy import Policy
from agent.step import EngineStep
from agent.tools import ToolContext, read_only_tools, schemas
from tests.agent_support import Steered, call, long_context_copy

GREEDY = engine.SamplingParams(temperature=0.0, max_tokens=200)


class SteeredStep(EngineStep):
    def __init__(self, model: Steered, replies: list[str], **kwargs: Any) -> None:
        super().__init__(model, GREEDY, schemas(read_only_tools()), **kwargs)
        self.replies = replies
        self.outputs: list[Any] = []

    def __call__(self, messages: list[dict[str, Any]], cancel: Any) -> Any:
        self.model.say(self.replies.pop(0) if self.replies else "Done.")
        for ev in super().__call__(messages, cancel):
            if not isinstance(ev, engine.Delta):
                self.outputs.append(ev)
            yield ev


@pytest.fixture(scope="module")
def steered(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Steered:
    # The fixture's context (128) is too short for a prompt with tool schemas: the same weights, longer.
    directory = long_context_copy(tiny_model("qwen3").path, tmp_path_factory.mktemp("agent_model") / "qwen3")
    return Steered(engine.load_model(directory, backend="numpy"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("alpha\nbeta\n")
    return tmp_path


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is in notes?"}]


def loop(step: SteeredStep, repo: Path, max_turns: int = 8) -> LoopResult:
    ctx = ToolContext(Confinement(repo))
    *_, result = run_loop(step, MESSAGES, read_only_tools(), Policy(), ctx, "qwen3", max_turns)
    return result


def test_a_real_model_calls_a_tool_reads_the_result_and_answers(steered: Steered, repo: Path) -> None:
    replies = [call("read_file", path="notes.txt"), call("grep", regex="beta"), "Two lines."]
    step = SteeredStep(steered, replies)
    result = loop(step, repo)
    assert result.finish_reason == "stop" and result.text == "Two lines." and len(result.steps) == 3
    assert [r.tool for r in result.records] == ["read_file", "grep"] and all(r.ok for r in result.records)
    assert "    2\tbeta" in result.messages[1]["content"]
    assert result.messages[3]["content"].startswith("notes.txt:2: beta")


def test_each_step_prefills_only_the_new_tokens(steered: Steered, repo: Path) -> None:
    step = SteeredStep(steered, [call("read_file", path="notes.txt"), call("list_files"), "Done."])
    result = loop(step, repo)
    first, *later = step.outputs
    assert not first.continued and first.prefilled_tokens == first.prompt_tokens
    previous = first
    for out in later:
        assert out.continued and out.cache_bust is None
        # Everything the previous step saw and generated (minus its final end-of-turn token) is reused.
        assert out.cached_tokens == previous.prompt_tokens + previous.generated_tokens - 1
        assert out.prefilled_tokens == out.prompt_tokens - out.cached_tokens
        previous = out
    assert [s.info["prefilled_tokens"] for s in result.steps] == [o.prefilled_tokens for o in step.outputs]


def test_re_rendering_instead_busts_the_cache_at_the_reply_and_says_why(steered: Steered, repo: Path) -> None:
    step = SteeredStep(steered, [call("read_file", path="notes.txt"), "Done."], continue_history=False)
    loop(step, repo)
    second = step.outputs[1]
    bust = second.cache_bust
    # Qwen3's template drops the empty think block of the generation prompt when it re-renders the reply.
    assert bust["reason"] == "template_rerender"
    assert bust["message_index"] == 2 and bust["role"] == "assistant"
    assert bust["wasted_tokens"] > 0 and second.cached_tokens == bust["token_index"]
    assert second.prefilled_tokens == second.prompt_tokens - bust["token_index"]


def test_a_changed_system_prompt_is_reported_at_message_zero(steered: Steered) -> None:
    step = EngineStep(steered, GREEDY, schemas(read_only_tools()))
    old = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]
    new = [{"role": "system", "content": "You are verbose."}, {"role": "user", "content": "hi"}]
    old_ids, _ = step.prompt(old)
    new_ids, _ = step.prompt(new)
    decode = steered.tokenizer.decode
    bust = diagnose(old_ids, new_ids, new, lambda i: step.render(new[:i], False), decode)
    assert bust is not None and bust.reason == "system_prompt_changed" and bust.message_index == 0
    edited = [old[0], {"role": "user", "content": "hello"}]
    edited_ids, _ = step.prompt(edited)
    bust = diagnose(old_ids, edited_ids, edited, lambda i: step.render(edited[:i], False),
                    steered.tokenizer.decode)  # fmt: skip
    assert bust is not None and bust.reason == "message_changed" and bust.message_index == 1
    assert diagnose(old_ids, [*old_ids, 5], old, lambda i: "", decode) is None


def test_the_system_prompt_with_tools_is_the_same_prefix_for_every_session(steered: Steered) -> None:
    step = EngineStep(steered, GREEDY, schemas(read_only_tools()))
    a = step.prompt([{"role": "user", "content": "first question"}])[0]
    b = step.prompt([{"role": "user", "content": "another one"}])[0]
    rendered = step.render([{"role": "user", "content": "x"}])
    assert "<tools>" in rendered and '"name": "search_code"' in rendered
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert shared > 200  # the whole tools block is a common prefix: its KV blocks are shared


@pytest.fixture(scope="module")
def steered_llama(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Steered:
    source = tiny_model("llama3_classic").path
    directory = long_context_copy(source, tmp_path_factory.mktemp("agent_llama") / "llama3")
    return Steered(engine.load_model(directory, backend="numpy"))


def test_llama_makes_json_tool_calls_through_its_own_template(steered_llama: Steered, repo: Path) -> None:
    replies = ['{"name": "read_file", "parameters": {"path": "notes.txt"}}', "Two lines."]
    step = SteeredStep(steered_llama, replies)
    ctx = ToolContext(Confinement(repo))
    messages = [{"role": "user", "content": "What is in notes?"}]
    *_, result = run_loop(step, messages, read_only_tools(), Policy(), ctx, steered_llama.arch, 4)
    assert result.finish_reason == "stop" and result.text == "Two lines."
    assert [r.tool for r in result.records] == ["read_file"] and result.records[0].ok
    rendered = step.render(messages)
    assert '"name": "search_code"' in rendered  # the schemas went into Llama's first user message
    second = step.outputs[1]
    assert second.continued and second.cache_bust is None
    assert second.prefilled_tokens < second.prompt_tokens / 4  # the tool result, not the whole prompt again


def test_tool_results_that_fill_the_context_end_the_loop_with_a_clear_error(
    tiny_model: Any, tmp_path: Path
) -> None:
    directory = long_context_copy(tiny_model("qwen3").path, tmp_path / "qwen3", positions=1600)
    model = Steered(engine.load_model(directory, backend="numpy"))
    (tmp_path / "big.txt").write_text("".join(f"line {i} of a long file\n" for i in range(300)))
    step = SteeredStep(model, [call("read_file", path="big.txt"), "never said"])
    result = loop(step, tmp_path)
    assert result.finish_reason == "error" and len(result.steps) == 1 and result.records[0].ok
    assert result.error.startswith("ContextFull: this step's prompt is ")
    assert "context is 1,600 tokens" in result.error and "read_file line range" in result.error
