"""An agent turn (`TurnOptions.allow_tools` other than "none"): the tool loop of `agent/` on the session's
model, from the prompt and KV blocks the runner prepared, recorded as the session's messages.

The runner has built the prompt (with the tool schemas), recorded the user message, restored KV blocks
and emitted `cache`; from there this module generates, runs tools, appends results and generates again
(agent.loop), streaming `delta`, `tool_call` and `tool_result` events. Each step's reply and each tool
result is recorded as a message (an assistant message holds the reply as generated, call markup included;
a tool message holds the result text and, in `tool_results`, the call's record). The last message carries
the token history, so the next turn's prompt extends it and its KV blocks are reused.
"""

from __future__ import annotations

import logging
from typing import Any

from sessions.events import Delta, Result, ToolCall, ToolResult
from sessions.model import Message
from sessions.prompt import template_messages

log = logging.getLogger("workbench.sessions")


def tool_schemas() -> list[dict[str, Any]]:
    """The schemas every agent session's prompt carries: the same for every session of a model, so the
    system prompt with its tools is one shared KV prefix."""
    from agent.tools import default_tools, schemas

    return schemas(default_tools())


def run_agent_turn(state: Any) -> Result:
    """The runner's hook (sessions/runner.py `_phases`): the tool loop in place of `stream` + `finish`."""
    import engine

    sp = state.settings.sampling
    params = engine.SamplingParams(temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p, min_p=sp.min_p,
                                   repetition_penalty=sp.repetition_penalty, seed=sp.seed,
                                   max_tokens=state.fitted.max_tokens)  # fmt: skip
    retrieved = [{k: c[k] for k in ("path", "start_line", "end_line", "symbol", "score")}
                 for c in state.retrieved.chunks]  # fmt: skip
    return run_agent(state.job, state.model, state.name, state.fitted.token_ids, params, state.cache,
                     state.restored, state.blocks, retrieved)  # fmt: skip


def cache_bust(session: Any, model: Any, settings: Any, prompt_ids: list[int],
               tools: list[dict[str, Any]] | None) -> dict[str, Any] | None:  # fmt: skip
    """Where this turn's prompt stops extending the session's token history, and why (None: it extends
    it, or there is no history). Called once the new user message is among the session's messages."""
    from agent.cachebust import diagnose

    history = session.history
    if not history:
        return None
    tok = model.tokenizer
    new = template_messages(settings.system_prompt, session.messages, marker=False)

    def render_prefix(i: int) -> str:
        try:
            return tok.render_chat(new[:i], add_generation_prompt=False, enable_thinking=settings.thinking,
                                   tools=tools)  # fmt: skip
        except Exception:  # a template may refuse a prefix (Llama 3 wants its first user message)
            return ""

    report = diagnose(history, prompt_ids, new, render_prefix, tok.decode,
                      model_changed=session.history_fingerprint != model.fingerprint)  # fmt: skip
    return report.to_dict() if report else None


def run_agent(job: Any, model: Any, name: str, prompt_ids: list[int], params: Any, cache: Any, restored: Any,
              blocks: Any, retrieved: list[dict[str, Any]]) -> Result:  # fmt: skip
    from agent.confine import Confinement
    from agent.loop import AgentLoop, LoopResult, TextEvent, ToolCallEvent, ToolResultEvent
    from agent.policy import Policy
    from agent.step import EngineStep
    from agent.tools import ToolContext, default_tools, schemas

    s, turn, opts = job.session, job.turn, job.options
    settings = opts.apply(s.settings)
    tools = default_tools()
    ctx = ToolContext(Confinement(s.repo), open_index=lambda: job.retriever.index_for(s.repo),
                      cancel=turn.cancel_event)  # fmt: skip
    policy = opts.policy if opts.policy is not None else Policy(opts.allow_tools)
    step = EngineStep(model, params, schemas(tools), thinking=settings.thinking)
    step.start(prompt_ids, cache, restored.last_logits)
    loop = AgentLoop(step, tools, policy, ctx, dialect=model.arch, max_turns=opts.max_turns)
    outcome: LoopResult | None = None
    for ev in loop.run(template_messages(settings.system_prompt, s.messages, marker=False)):
        if isinstance(ev, TextEvent):
            if ev.text:
                turn.emit(Delta(s.id, text=ev.text, kind=ev.kind))
        elif isinstance(ev, ToolCallEvent):
            turn.emit(ToolCall(s.id, **ev.to_dict()))
        elif isinstance(ev, ToolResultEvent):
            turn.emit(_result_event(s.id, ev.record))
        else:
            outcome = ev
    assert outcome is not None
    return _finish(job, model, name, prompt_ids, cache, restored, blocks, retrieved, step, outcome)


def _result_event(session_id: str, record: Any) -> ToolResult:
    d = record.to_dict()
    return ToolResult(session_id, call_id=d["call_id"], tool=d["tool"], step=d["step"], kind=d["kind"],
                      ok=d["ok"], summary=d["summary"], error=d["error"], approval=d["approval"],
                      seconds=d["seconds"], result=record.result, data=d["data"])  # fmt: skip


def _finish(job: Any, model: Any, name: str, prompt_ids: list[int], cache: Any, restored: Any, blocks: Any,
            retrieved: list[dict[str, Any]], step: Any, outcome: Any) -> Result:  # fmt: skip
    s = job.session
    finish = outcome.finish_reason
    infos = [st.info for st in outcome.steps]
    tokens = {
        "prompt": len(prompt_ids),
        "cached": restored.cached_tokens,
        "prefilled": sum(i.get("prefilled_tokens", 0) for i in infos),
        "generated": sum(i.get("generated_tokens", 0) for i in infos),
    }
    timings = {"restore_s": round(restored.restore_s, 6)}
    if infos and "ttft_s" in infos[0]:
        timings["ttft_s"] = round(restored.restore_s + infos[0]["ttft_s"], 6)
    history = list(step.cached_ids) if outcome.error is None else None
    if blocks is not None and history:
        try:
            from kvstore import space_of

            space = space_of(model)
            blocks.save(space, cache, history)
            blocks.pin(s.id, space, history)
        except Exception as exc:  # the transcript is worth more than its cache
            log.warning("session %s: KV blocks not saved (%s)", s.id, exc)
    records = {r.call_id: r for r in outcome.records}
    messages = outcome.messages or [{"role": "assistant", "content": ""}]
    status = "interrupted" if finish in ("cancelled", "error") else "complete"
    step_finish = iter([st.finish_reason for st in outcome.steps])  # one assistant message per step
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if m["role"] == "tool":
            record = records.get(m["tool_call_id"])
            message = Message(role="tool", content=m["content"], model=name,
                              tool_results=[record.to_dict()] if record else [])  # fmt: skip
        else:
            reasoning = m.get("reasoning_content", "")
            message = Message(role="assistant", content=m["content"], reasoning=reasoning,
                              model=name, finish_reason=next(step_finish, finish),
                              status=status if last else "complete")  # fmt: skip
        if last:
            message.timings, message.error = timings, outcome.error
            message.cache = {**tokens, "by_tier": dict(restored.by_tier), "bytes_read": restored.bytes_read}
            job.store.append_message(s, message, history=history, fingerprint=model.fingerprint,
                                     dtype=model.kv_dtype)  # fmt: skip
        else:
            job.store.append_message(s, message)
    code = 130 if finish == "cancelled" else (1 if finish == "error" else 0)
    return Result(s.id, text=outcome.text, reasoning=messages[-1].get("reasoning_content", ""), model=name,
                  backend=model.backend, finish_reason=finish, tokens=tokens, timings=timings,
                  cache_by_tier=dict(restored.by_tier), retrieved=retrieved, message=len(s.messages),
                  is_error=finish == "error", error=outcome.error, exit_code=code,
                  tool_calls=[r.to_dict() for r in outcome.records], steps=len(outcome.steps))  # fmt: skip
