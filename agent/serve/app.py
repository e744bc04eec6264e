"""The HTTP API: OpenAI's chat completions (plain and streamed), models, feedback, health, readiness, metrics.

Every answer names the version that produced it (``model`` and the ``x-qtha-version`` header) and carries its
request id (``id`` and ``x-request-id``), which ``POST /v1/feedback`` refers to. A request leases the serving
version for its whole life, so a hot swap never changes the model under a running request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.clock import Clock
from agent.config import ServeConfig
from agent.serve.engine import Delta, Event, Finished, Handle, Sampling, Served
from agent.serve.errors import (
    ApiError,
    BadRequest,
    EngineUnavailable,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
)
from agent.serve.follower import Follower
from agent.serve.metrics import CONTENT_TYPE, ServeMetrics
from agent.serve.schemas import ChatCompletionRequest, FeedbackRequest, parse_body
from agent.serve.security import BearerAuth
from agent.serve.usage import UsageWriter
from agent.store import NotFoundError, UsageRecord

__all__ = ["MODEL_ALIASES", "ServeParts", "create_app"]

log = logging.getLogger(__name__)

# Names a client may put in ``model`` for "whatever the champion is"; a live version's id works too.
MODEL_ALIASES = ("qtha", "champion")
# Requests that must answer even when the server is saturated (probes and scrapes).
_UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass
class ServeParts:
    """The collaborators of one server (built by :func:`agent.serve.server.build_parts`, or by a test).

    Attributes:
        follower: hands out leases on the serving version.
        metrics: ``qtha_serve_*``.
        auth: the bearer-token check.
        limits: the ``[serve]`` section (token, length, choice and time limits; usage content switch).
        clock: timestamps of usage records.
        usage: the usage log writer, None when the log is switched off.
        add_feedback: ``store.usage.add_feedback``.
    """

    follower: Follower
    metrics: ServeMetrics
    auth: BearerAuth
    limits: ServeConfig
    clock: Clock
    usage: UsageWriter | None = None
    add_feedback: Callable[..., Any] | None = None
    started: float = field(default_factory=time.time)


class _Limits:
    """Pure-ASGI guard in front of everything: refuses beyond ``max_connections`` concurrent requests (503) and
    bodies above ``max_body_bytes`` (413), before a byte of the body is buffered."""

    def __init__(self, app: ASGIApp, *, max_connections: int, max_body_bytes: int) -> None:
        self.app = app
        self.max_connections = max_connections
        self.max_body_bytes = max_body_bytes
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in _UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_connections:
            await _send_error(send, EngineUnavailable(
                f"the server is handling {self.active} requests, its limit (serve.max_connections); retry shortly"
            ))
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _send_error(send, _too_large(int(length), self.max_body_bytes))
            return
        self.active += 1
        try:
            await self.app(scope, self._counting(receive), send)
        finally:
            self.active -= 1

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _too_large(seen, self.max_body_bytes)
            return message

        return counted


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body has more than {limit} bytes ({size} seen; serve.max_body_bytes); send a shorter one"
    )


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_response(error: ApiError, extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers={**error.headers(), **(extra_headers or {})})


class _Bridge:
    """Carries engine events (on the engine's thread) into the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop closed (server shutting down); nobody is waiting any more
            pass


class _Exchange:
    """One chat request from arrival to its record: what was asked, what came back, timings, and the outcome
    that goes to the metrics and the usage log exactly once."""

    def __init__(self, parts: ServeParts, request_id: str) -> None:
        self.parts = parts
        self.request_id = request_id
        self.arrived = time.perf_counter()
        self.first_token: float | None = None
        self.version = parts.follower.version or "none"
        self.request: ChatCompletionRequest | None = None
        self.sampling: Sampling | None = None
        self.texts: list[str] = []
        self.finish_reasons: list[str] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.handle: Handle | None = None
        self._release: Callable[[], None] | None = None
        self._recorded = False

    def saw(self, delta: Delta) -> None:
        if self.first_token is None and (delta.text or delta.tokens):
            self.first_token = time.perf_counter()
        while len(self.texts) <= delta.index:
            self.texts.append("")
        self.texts[delta.index] += delta.text

    def finished(self, done: Finished) -> None:
        self.texts = list(done.texts)
        self.finish_reasons = list(done.finish_reasons)
        self.prompt_tokens, self.completion_tokens = done.prompt_tokens, done.completion_tokens

    def close(self, status: int, error: str | None = None) -> None:
        """Cancels the engine work if still running, ends the lease, and records the outcome (the first call
        counts; later ones do nothing)."""
        if self._recorded:
            return
        self._recorded = True
        if self.handle is not None and status != 200:
            self.handle.cancel()
        if self._release is not None:
            release, self._release = self._release, None
            release()
        now = time.perf_counter()
        duration = now - self.arrived
        ttft = None if self.first_token is None else self.first_token - self.arrived
        self.parts.metrics.request_done(
            self.version,
            status,
            duration_s=duration if status == 200 else None,
            ttft_s=ttft if status == 200 else None,
            prompt_tokens=self.prompt_tokens if status == 200 else 0,
            completion_tokens=self.completion_tokens,
        )
        usage = self.parts.usage
        if usage is None or self.request is None:
            return  # a request refused before it was understood has nothing worth learning from
        content = self.parts.limits.usage_content
        sampling = {} if self.sampling is None else {
            "max_tokens": self.sampling.max_tokens,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "stop": list(self.sampling.stop),
            "seed": self.sampling.seed,
            "n": self.request.n,
            "stream": self.request.stream,
        }
        usage.submit(UsageRecord(
            request_id=self.request_id,
            at=self.parts.clock.now(),
            version_id=self.version,
            status=status,
            error=error,
            messages=tuple(m.as_template_message() for m in self.request.messages) if content else (),
            answers=tuple(self.texts) if content else (),
            finish_reasons=tuple(self.finish_reasons),
            sampling=sampling,
            latency_s=duration,
            ttft_s=ttft,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        ))

    def headers(self) -> dict[str, str]:
        return {"x-qtha-version": self.version, "x-request-id": self.request_id}


def create_app(parts: ServeParts) -> ASGIApp:
    """The ASGI application of one server."""
    app = FastAPI(title="qtha serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.parts = parts

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error_response(NotFound(f"no route {request.method} {request.url.path}; see /v1/models"))
        error = ApiError(str(exc.detail))
        error.status, error.type = exc.status_code, "invalid_request_error"
        return _error_response(error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.error("unexpected error %s on %s %s", ref, request.method, request.url.path, exc_info=exc)
        return _error_response(ApiError(f"internal error; the server log has the details under {ref}"))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        version = parts.follower.version
        if version is None:
            return _error_response(EngineUnavailable("no model is loaded and warmed yet"))
        return JSONResponse({"status": "ready", "version": version})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(parts.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        parts.auth.check(request.headers.get("authorization"))
        version = parts.follower.version
        created = int(parts.started)
        names = [*MODEL_ALIASES, *([version] if version else [])]
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "qtha"} for n in names],
        }

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> JSONResponse:
        parts.auth.check(request.headers.get("authorization"))
        body = parse_body(FeedbackRequest, await _json(request))
        if parts.usage is None or parts.add_feedback is None:
            raise NotFound("the usage log is switched off (serve.usage_log = false), so feedback has no request")
        await run_in_threadpool(parts.usage.flush)
        try:
            given = await run_in_threadpool(
                parts.add_feedback, body.request_id, score=body.score, correct_answer=body.correct_answer
            )
        except NotFoundError as exc:
            raise NotFound(str(exc), param="request_id") from None
        parts.metrics.feedback_given(
            given.version_id, score=body.score, correct_answer=body.correct_answer is not None
        )
        return JSONResponse(
            {"object": "feedback", "id": given.id, "request_id": given.request_id, "version": given.version_id}
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        exchange = _Exchange(parts, f"chatcmpl-{uuid.uuid4().hex}")
        try:
            parts.auth.check(request.headers.get("authorization"))
            req = parse_body(ChatCompletionRequest, await _json(request))
            exchange.request = req
            sampling = _sampling(req, parts.limits)
            exchange.sampling = sampling
            served = _lease(exchange, req.model)
            bridge = _Bridge(asyncio.get_running_loop())
            prompt = served.engine.prompt_ids([m.as_template_message() for m in req.messages])
            limit = min(parts.limits.max_prompt_tokens, served.engine.max_prompt_tokens)
            if len(prompt) > limit:
                raise PayloadTooLarge(
                    f"the prompt has {len(prompt)} tokens; this server takes at most {limit}", param="messages"
                )
            exchange.prompt_tokens = len(prompt)
            exchange.handle = served.engine.submit(
                prompt, sampling, n=req.n, request_id=exchange.request_id, on_event=bridge.put
            )
        except ApiError as exc:
            exchange.close(exc.status, exc.message)
            return _error_response(exc, exchange.headers())
        except BaseException:
            exchange.close(500, "internal error")
            raise
        deadline = exchange.arrived + parts.limits.request_timeout_s
        if req.stream:
            return _Streamed(_stream(exchange, bridge, deadline), exchange, headers=exchange.headers())
        try:
            await _collect(exchange, bridge, deadline)
        except ApiError as exc:
            exchange.close(exc.status, exc.message)
            return _error_response(exc, exchange.headers())
        except BaseException:  # cancelled (client gone, shutdown) or a bug: free the slots, record it
            exchange.close(500, "interrupted")
            raise
        exchange.close(200)
        return JSONResponse(_completion(exchange), headers=exchange.headers())

    return _Limits(app, max_connections=parts.limits.max_connections, max_body_bytes=parts.limits.max_body_bytes)


def _lease(exchange: _Exchange, model: str | None) -> Served:
    follower = exchange.parts.follower
    lease = follower.lease()
    served = lease.__enter__()
    exchange.version = served.version_id
    exchange._release = lambda: lease.__exit__(None, None, None)
    if model is not None and model not in (*MODEL_ALIASES, served.version_id):
        raise NotFound(
            f"model {model!r} is not served here; use 'qtha' (the champion, now {served.version_id})",
            param="model",
            code="model_not_found",
        )
    return served


async def _json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None


def _sampling(req: ChatCompletionRequest, limits: ServeConfig) -> Sampling:
    asked = req.max_completion_tokens or req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if asked is not None and asked > limits.max_tokens:
        raise BadRequest(f"{param} = {asked} is above this server's limit of {limits.max_tokens}", param=param)
    if req.n > limits.max_n:
        raise BadRequest(f"n = {req.n} is above this server's limit of {limits.max_n}", param="n")
    return Sampling(
        max_tokens=asked or limits.default_max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stops,
        seed=req.seed,
    )


async def _next(bridge: _Bridge, deadline: float, exchange: _Exchange) -> Event:
    remaining = deadline - time.perf_counter()
    try:
        event = await asyncio.wait_for(bridge.queue.get(), timeout=max(remaining, 0.0))
    except TimeoutError:
        raise RequestTimeout(
            f"the request ran longer than {exchange.parts.limits.request_timeout_s} s "
            "(serve.request_timeout_s) and was cancelled; ask for fewer tokens"
        ) from None
    if isinstance(event, BaseException):
        if isinstance(event, ApiError):
            raise event
        raise EngineUnavailable(f"the request was stopped: {event}")
    return event


async def _collect(exchange: _Exchange, bridge: _Bridge, deadline: float) -> None:
    while True:
        event = await _next(bridge, deadline, exchange)
        if isinstance(event, Finished):
            exchange.finished(event)
            return
        exchange.saw(event)


def _completion(exchange: _Exchange) -> dict[str, Any]:
    return {
        "id": exchange.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": exchange.version,
        "system_fingerprint": exchange.version,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            for i, (text, reason) in enumerate(zip(exchange.texts, exchange.finish_reasons, strict=True))
        ],
        "usage": _usage(exchange),
    }


def _usage(exchange: _Exchange) -> dict[str, int]:
    return {
        "prompt_tokens": exchange.prompt_tokens,
        "completion_tokens": exchange.completion_tokens,
        "total_tokens": exchange.prompt_tokens + exchange.completion_tokens,
    }


def _chunk(exchange: _Exchange, created: int, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    data = {
        "id": exchange.request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": exchange.version,
        "system_fingerprint": exchange.version,
        "choices": choices,
        **extra,
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _stream(exchange: _Exchange, bridge: _Bridge, deadline: float) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format; errors after the headers went out become an error event."""
    req = exchange.request
    assert req is not None
    created = int(time.time())
    for i in range(req.n):
        yield _chunk(exchange, created, [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ])
    try:
        while True:
            event = await _next(bridge, deadline, exchange)
            if isinstance(event, Finished):
                exchange.finished(event)
                break
            exchange.saw(event)
            if event.text:
                yield _chunk(exchange, created, [
                    {"index": event.index, "delta": {"content": event.text}, "logprobs": None,
                     "finish_reason": None}
                ])
            if event.finish_reason is not None:
                yield _chunk(exchange, created, [
                    {"index": event.index, "delta": {}, "logprobs": None, "finish_reason": event.finish_reason}
                ])
    except ApiError as exc:
        exchange.close(exc.status, exc.message)
        yield b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
        return
    if req.stream_options is not None and req.stream_options.include_usage:
        yield _chunk(exchange, created, [], usage=_usage(exchange))
    exchange.close(200)
    yield b"data: [DONE]\n\n"


class _Streamed(StreamingResponse):
    """A streamed answer whose exchange is closed however the stream ends (finished, failed, client gone)."""

    def __init__(self, body: AsyncIterator[bytes], exchange: _Exchange, *, headers: Mapping[str, str]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
        self._exchange = exchange

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._exchange.close(499, "client disconnected")  # no-op when the stream already closed it
