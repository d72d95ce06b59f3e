"""An agent turn (`TurnOptions.allow_tools` other than "none"): the tool loop of `agent/` on the session's
model, from the prompt and KV blocks the runner prepared, recorded as the session's messages as it goes.

The runner has built the prompt (with the tool schemas), recorded the user message, restored KV blocks
and emitted `cache` on the engine thread; from there the loop runs on a thread of its own and goes back
to the engine thread only to generate (sessions/agent_bridge.py), so a tool running or an approval
waiting never holds up another session's turn. It streams `prefill`, `delta`, `tool_call`,
`tool_result` and `approval` events. Each step's reply is recorded when the step ends (with the token
history so far; partial records while it streams) and each tool result when it is known, so a cancel or
a crash keeps every step that happened. An assistant message holds the reply as generated (call markup
included); a tool message holds the result text and, in `tool_results`, the call's record.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sessions.agent_bridge import Partials, TurnApprover, on_engine_thread
from sessions.events import Delta, Result, ToolCall, ToolResult
from sessions.model import Message
from sessions.prompt import template_messages

log = logging.getLogger("workbench.sessions")


def tool_schemas() -> list[dict[str, Any]]:
    """The schemas every agent session's prompt carries: the same for every session of a model, so the
    system prompt with its tools is one shared KV prefix."""
    from agent.tools import default_tools, schemas

    return schemas(default_tools())


def run_agent_turn(state: Any) -> Result | None:
    """The runner's hook (sessions/runner.py `_phases`) in place of `stream` + `finish`, on the engine
    thread. With an engine thread to go back to (`job.on_engine`), the loop continues on a thread of its
    own, which emits the Result, and this returns None; without one it runs here and returns the Result."""
    turn = AgentTurn(state)
    if state.job.on_engine is None:
        return turn.run()
    threading.Thread(target=turn.run_and_emit, name=f"wb-agent-{state.session.id}", daemon=True).start()
    return None


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


class AgentTurn:
    def __init__(self, state: Any) -> None:
        import engine
        from agent.step import EngineStep
        from agent.tools import default_tools, schemas

        self.state, self.job, self.s = state, state.job, state.session
        self.turn, self.opts, self.model = state.job.turn, state.job.options, state.model
        sp = state.settings.sampling
        params = engine.SamplingParams(temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p,
                                       min_p=sp.min_p, repetition_penalty=sp.repetition_penalty, seed=sp.seed,
                                       max_tokens=state.fitted.max_tokens)  # fmt: skip
        self.tools = default_tools()
        self.step = EngineStep(self.model, params, schemas(self.tools), thinking=state.settings.thinking,
                               close_cut=True)  # fmt: skip
        self.step.start(state.fitted.token_ids, state.cache, state.restored.last_logits)
        self.partials: Partials | None = None  # the step being generated

    # -- the loop, on the agent's thread (or inline) ------------------------------------------------

    def run_and_emit(self) -> None:
        try:
            result = self.run()
        except Exception as exc:  # a bug here must still end the turn with one Result
            log.exception("agent turn of session %s failed", self.s.id)
            result = Result(self.s.id, model=self.state.name, backend=self.model.backend,
                            finish_reason="error", is_error=True, error=f"{type(exc).__name__}: {exc}",
                            exit_code=1)  # fmt: skip
        self.turn.emit(result)

    def run(self) -> Result:
        from agent.confine import Confinement
        from agent.loop import AgentLoop, LoopResult, StepDone, TextEvent, ToolCallEvent, ToolResultEvent
        from agent.tools import ToolContext

        s, turn = self.s, self.turn
        ctx = ToolContext(Confinement(s.repo), open_index=lambda: self.job.retriever.index_for(s.repo),
                          cancel=turn.cancel_event)  # fmt: skip
        loop = AgentLoop(self._step, self.tools, self._policy(), ctx, dialect=self.model.arch,
                         max_turns=self.opts.max_turns)  # fmt: skip
        outcome: LoopResult | None = None
        for ev in loop.run(template_messages(self.state.settings.system_prompt, s.messages, marker=False)):
            if isinstance(ev, TextEvent):
                if ev.text:
                    turn.emit(Delta(s.id, text=ev.text, kind=ev.kind))
            elif isinstance(ev, ToolCallEvent):
                turn.emit(ToolCall(s.id, **ev.to_dict()))
            elif isinstance(ev, ToolResultEvent):
                turn.emit(_result_event(s.id, ev.record))
                self._record(Message(role="tool", content=ev.record.result, model=self.state.name,
                                     tool_results=[ev.record.to_dict()]))  # fmt: skip
            elif isinstance(ev, StepDone):
                self._record_reply(ev)
            else:
                outcome = ev
        assert outcome is not None
        return self._finish(outcome)

    def _policy(self) -> Any:
        from agent.policy import Policy

        approver = TurnApprover(self.turn, self.s.id) if self.opts.ask_approval else None
        if self.opts.policy is not None:  # the caller's, for the session: its "always" grants last
            return self.opts.policy.with_approver(approver) if approver else self.opts.policy
        return Policy(self.opts.allow_tools, approver)

    def _step(self, messages: list[dict[str, Any]], cancel: threading.Event) -> Any:
        """One generation: prefill progress and partial records as it streams, on the engine thread."""
        import engine
        from agent.step import StepOutput
        from sessions.runner import prefill_reporter

        self.step.on_prefill = prefill_reporter(self.turn, self.s.id)
        self.partials = Partials(self.job.store, self.s, len(self.s.messages), self.job.partial_interval_s)
        if self.job.on_engine is None:
            events = self.step(messages, cancel)
        else:
            dropped = StepOutput("", "", "cancelled", 0, 0, 0, 0, 0.0, False)  # cancelled before it began
            events = on_engine_thread(self.step, self.job.on_engine, messages, cancel, lambda: dropped)
        for ev in events:
            if isinstance(ev, engine.Delta) and ev.text:
                self.partials.add(ev.text, ev.kind)
            yield ev

    # -- recording ---------------------------------------------------------------------------------

    def _record(self, message: Message, history: list[int] | None = None) -> None:
        model = self.model
        self.job.store.append_message(self.s, message, history=history, fingerprint=model.fingerprint,
                                      dtype=model.kv_dtype)  # fmt: skip

    def _record_reply(self, done: Any) -> None:
        """A step's reply, with the token history its KV cache now holds (the next step or turn extends
        it); its own tokens and timings (the first step's cached tokens are the restored blocks)."""
        info, finish = done.info.info, done.info.finish_reason
        if finish == "cancelled" and not done.reply["content"] and not info.get("prompt_tokens"):
            return  # a step dropped before it began (cancelled while queued): nothing happened
        r = self.state.restored
        cache = {"prompt": info.get("prompt_tokens", 0), "cached": info.get("cached_tokens", 0),
                 "prefilled": info.get("prefilled_tokens", 0), "generated": info.get("generated_tokens", 0),
                 "step": done.info.step}  # fmt: skip
        timings = {"ttft_s": round(info.get("ttft_s", 0.0), 6), "step_s": round(done.info.seconds, 6)}
        if done.info.step == 1:
            cache.update(by_tier=dict(r.by_tier), bytes_read=r.bytes_read)
            timings = {**timings, "ttft_s": round(r.restore_s + timings["ttft_s"], 6),
                       "restore_s": round(r.restore_s, 6)}  # fmt: skip
        message = Message(role="assistant", content=done.reply["content"],
                          reasoning=done.reply.get("reasoning_content", ""), model=self.state.name,
                          finish_reason=finish, status="interrupted" if finish == "cancelled" else "complete",
                          timings=timings, cache=cache)  # fmt: skip
        self._record(message, history=list(self.step.cached_ids))

    def _finish(self, outcome: Any) -> Result:
        s, finish = self.s, outcome.finish_reason
        if outcome.error is not None:  # the engine failed mid-step: keep what it streamed, as interrupted
            text = self.partials.text if self.partials else {"answer": "", "reasoning": ""}
            self._record(Message(role="assistant", content=text["answer"], reasoning=text["reasoning"],
                                 model=self.state.name, finish_reason="error", status="interrupted",
                                 error=outcome.error))  # fmt: skip
        elif self.job.on_engine is None:  # inline: run_turn keeps the cache live afterwards
            self._save_blocks()
        else:
            # On the engine thread, where the cache belongs; not waited for, so a cancel ends the turn at
            # once even while another turn generates. It is queued before anything this turn's Result
            # lets run (the session's next turn), so that turn finds the blocks and the live cache.
            self.job.on_engine(lambda: self._save_blocks(keep_live=True))
        infos = [st.info for st in outcome.steps]
        r = self.state.restored
        tokens = {
            "prompt": len(self.state.fitted.token_ids),
            "cached": r.cached_tokens,
            "prefilled": sum(i.get("prefilled_tokens", 0) for i in infos),
            "generated": sum(i.get("generated_tokens", 0) for i in infos),
        }
        timings = {"restore_s": round(r.restore_s, 6)}
        if infos and "ttft_s" in infos[0]:
            timings["ttft_s"] = round(r.restore_s + infos[0]["ttft_s"], 6)
        retrieved = [{k: c[k] for k in ("path", "start_line", "end_line", "symbol", "score")}
                     for c in self.state.retrieved.chunks]  # fmt: skip
        code = 130 if finish == "cancelled" else (1 if finish == "error" else 0)
        replies = [m for m in outcome.messages if m["role"] == "assistant"]
        reasoning = replies[-1].get("reasoning_content", "") if replies else ""
        return Result(s.id, text=outcome.text, reasoning=reasoning, model=self.state.name,
                      backend=self.model.backend, finish_reason=finish, tokens=tokens, timings=timings,
                      cache_by_tier=dict(r.by_tier), retrieved=retrieved, message=len(s.messages),
                      is_error=finish == "error", error=outcome.error, exit_code=code,
                      tool_calls=[rec.to_dict() for rec in outcome.records],
                      steps=len(outcome.steps))  # fmt: skip

    def _save_blocks(self, keep_live: bool = False) -> None:
        """Save and pin the KV blocks of the whole loop under the history the last reply recorded; with
        `keep_live`, keep the cache itself for the session's next turn (sessions/warm.py)."""
        blocks, history = self.state.blocks, list(self.step.cached_ids)
        if keep_live and history and not self.opts.no_cache:
            self.job.live.keep(self.s.id, self.model.fingerprint, history, self.step.cache)
        if blocks is None or not history:
            return
        try:
            from kvstore import space_of

            space = space_of(self.model)
            blocks.save(space, self.step.cache, history)
            blocks.pin(self.s.id, space, history)
        except Exception as exc:  # the transcript is worth more than its cache
            log.warning("session %s: KV blocks not saved (%s)", self.s.id, exc)


def _result_event(session_id: str, record: Any) -> ToolResult:
    d = record.to_dict()
    return ToolResult(session_id, call_id=d["call_id"], tool=d["tool"], step=d["step"], kind=d["kind"],
                      ok=d["ok"], summary=d["summary"], error=d["error"], approval=d["approval"],
                      seconds=d["seconds"], result=record.result, data=d["data"])  # fmt: skip
