"""The OpenAI-compatible HTTP front door: /v1/chat/completions, /v1/completions, /v1/models (Starlette).

Loopback by default; a non-loopback bind needs an API key. Bodies past `max_body` get 413, requests past
`max_concurrent` (running + queued on the engine thread) 429; every error is OpenAI-shaped
(`{"error": {"message", "type", "param", "code"}}`), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serve.completion import Completer, CompletionJob, Finished

MAX_BODY = 4 << 20
MAX_CONCURRENT = 8
MAX_TOKENS_DEFAULT = 512


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


@dataclass
class Limits:
    api_key: str | None = None
    max_body: int = MAX_BODY
    max_concurrent: int = MAX_CONCURRENT


def create_app(completer: Completer, limits: Limits | None = None) -> Starlette:
    door = _FrontDoor(completer, limits or Limits())
    routes = [
        Route("/v1/models", door.models, methods=["GET"]),
        Route("/v1/chat/completions", door.chat, methods=["POST"]),
        Route("/v1/completions", door.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.add_exception_handler(ApiError, lambda _req, exc: exc.response())  # type: ignore[arg-type, return-value]
    app.add_exception_handler(
        404, lambda _req, _exc: ApiError(404, "no such endpoint", code="not_found").response()
    )
    app.add_exception_handler(405, lambda _req, _exc: ApiError(405, "method not allowed").response())
    return app


class _FrontDoor:
    def __init__(self, completer: Completer, limits: Limits) -> None:
        self.completer, self.limits = completer, limits
        self.inflight = 0
        self._lock = threading.Lock()

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "workbench"} for m in self.completer.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        body = await self._body(request)
        messages = _messages(body.get("messages"))

        def build(tok: Any) -> list[int]:
            text = tok.render_chat(messages, add_generation_prompt=True, enable_thinking=False)
            return tok.encode(text)

        return await self._serve(body, build, chat=True)

    async def completions(self, request: Request) -> Response:
        body = await self._body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
        return await self._serve(body, lambda tok: tok.encode(prompt), chat=False)

    # -- the checks every request passes -----------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        key = self.limits.api_key
        if key and request.headers.get("authorization", "") != f"Bearer {key}":
            raise ApiError(
                401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key"
            )

    async def _body(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body:
            raise ApiError(413, f"request body over {self.limits.max_body} bytes")
        raw = bytearray()
        async for piece in request.stream():
            raw += piece
            if len(raw) > self.limits.max_body:
                raise ApiError(413, f"request body over {self.limits.max_body} bytes")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise ApiError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required", param="model")
        if model not in self.completer.models:
            served = ", ".join(self.completer.models)
            raise ApiError(404, f"model {model!r} is not served here (served: {served})", param="model",
                           code="model_not_found")  # fmt: skip
        return body

    # -- running one completion -------------------------------------------------------------------

    async def _serve(self, body: dict[str, Any], build: Any, chat: bool) -> Response:
        sampling = _sampling(body)
        with self._lock:
            if self.inflight >= self.limits.max_concurrent:
                raise ApiError(429, f"busy: {self.inflight} requests in progress (the limit)",
                               kind="rate_limit_exceeded", code="busy")  # fmt: skip
            self.inflight += 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        job = CompletionJob(
            body["model"], build, sampling, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev)
        )
        self.completer.submit(job)
        reply = _Reply(body["model"], chat)
        if body.get("stream"):
            return StreamingResponse(self._stream(job, events, reply), media_type="text/event-stream")
        try:
            text = []
            while not isinstance(ev := await events.get(), Finished | Exception):
                text.append(ev.text)
        finally:
            self._release(job)
        if isinstance(ev, Exception):
            raise _engine_error(ev)
        return JSONResponse(reply.whole(ev))

    async def _stream(
        self, job: CompletionJob, events: asyncio.Queue[Any], reply: _Reply
    ) -> AsyncIterator[str]:
        try:
            if reply.chat:
                yield _sse(reply.chunk({"role": "assistant", "content": ""}))
            while not isinstance(ev := await events.get(), Finished | Exception):
                yield _sse(reply.chunk({"content": ev.text}) if reply.chat else reply.chunk(ev.text))
            if isinstance(ev, Exception):
                err = _engine_error(ev)
                yield _sse({"error": {"message": err.message, "type": err.kind, "param": None, "code": None}})
            else:
                yield _sse(reply.chunk({} if reply.chat else "", ev.finish_reason, reply.usage(ev)))
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away: stop generating for nobody
            self._release(job)

    def _release(self, job: CompletionJob) -> None:
        job.cancel.set()
        with self._lock:
            self.inflight -= 1


class _Reply:
    """The OpenAI objects of one completion (chat or text)."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def usage(self, done: Finished) -> dict[str, Any]:
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                "total_tokens": done.prompt_tokens + done.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": done.cached_tokens}}  # fmt: skip

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, delta: Any, finish: str | None = None, usage: dict | None = None) -> dict[str, Any]:
        if self.chat:
            out = self._head("chat.completion.chunk")
            out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
        else:
            out = self._head("text_completion")
            out["choices"] = [{"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}]
        if usage is not None:
            out["usage"] = usage
        return out

    def whole(self, done: Finished) -> dict[str, Any]:
        if self.chat:
            out = self._head("chat.completion")
            message = {"role": "assistant", "content": done.text}
            out["choices"] = [{"index": 0, "message": message, "finish_reason": done.finish_reason}]
        else:
            out = self._head("text_completion")
            out["choices"] = [
                {"index": 0, "text": done.text, "logprobs": None, "finish_reason": done.finish_reason}
            ]
        out["usage"] = self.usage(done)
        return out


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    out = []
    for n, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in (
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
        ):
            raise ApiError(
                400, f"messages[{n}] needs a role of system, user, assistant or tool", param="messages"
            )
        content = m.get("content") or ""
        if isinstance(content, list):  # content parts: only text is understood
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
            )
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{n}].content must be a string or text parts", param="messages")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    def number(name: str, default: float, lo: float, hi: float) -> float:
        value = body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise ApiError(400, f"'{name}' must be a number in [{lo}, {hi}], got {value!r}", param=name)
        return value

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = MAX_TOKENS_DEFAULT
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(
            400, f"'max_tokens' must be a positive integer, got {max_tokens!r}", param="max_tokens"
        )
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or an array of strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"'seed' must be an integer, got {seed!r}", param="seed")
    top_p = number("top_p", 1.0, 0.0, 1.0) or 1.0  # 0 means "no nucleus cut" to some clients
    return {"temperature": number("temperature", 1.0, 0.0, 2.0), "top_p": top_p, "seed": seed,
            "max_tokens": max_tokens, "stop": stop}  # fmt: skip


def _engine_error(exc: Exception) -> ApiError:
    from engine.errors import ContextLengthError, EngineError

    if isinstance(exc, ContextLengthError):
        return ApiError(400, str(exc), code="context_length_exceeded")
    if isinstance(exc, EngineError):
        return ApiError(500, f"the engine failed: {exc}", kind="server_error")
    return ApiError(500, f"the engine failed: {type(exc).__name__}: {exc}", kind="server_error")


def serve_http(completer: Completer, host: str, port: int, limits: Limits | None = None) -> None:
    """Run the front door until interrupted (uvicorn, one process)."""
    import uvicorn

    uvicorn.run(create_app(completer, limits), host=host, port=port, log_level="warning")
