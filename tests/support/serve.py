"""Test support for the server: a stand-in decoding engine and a real uvicorn server on a free loopback port.

:class:`EchoEngine` answers ``"<version>: <last user message reversed>"`` one character per token, from its own
thread, with the engine contract of :mod:`agent.serve.engine` (bounded queue, max_tokens, stop strings, cancel).
Its answers are a pure function of version and prompt, so a test can check which version answered what.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import openai

from agent.serve import ServeParts, ServeProcess
from agent.serve.engine import Delta, Event, Finished, Sampling, Served
from agent.serve.errors import BadRequest, EngineUnavailable, QueueFull


def expected_answer(version: str, messages: Sequence[Mapping[str, str]]) -> str:
    """What :class:`EchoEngine` of ``version`` answers (before max_tokens and stop strings cut it)."""
    last = [m["content"] for m in messages if m["role"] == "user"][-1]
    return f"{version}: {last[::-1]}"


@dataclass
class _Request:
    prompt: str
    sampling: Sampling
    n: int
    on_event: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class EchoEngine:
    """A stand-in engine (see the module docstring).

    Args:
        version: names the answers.
        max_queue: requests accepted but not finished beyond which ``submit`` raises QueueFull.
        token_delay_s: time per generated token (so concurrency and swaps overlap real work).
        gate: when given, decoding waits for it (to hold requests in flight).
    """

    def __init__(
        self,
        version: str,
        *,
        max_queue: int = 64,
        token_delay_s: float = 0.0,
        gate: threading.Event | None = None,
        max_prompt_tokens: int = 4096,
    ) -> None:
        self.version = version
        self.max_queue = max_queue
        self.token_delay_s = token_delay_s
        self.gate = gate
        self._max_prompt = max_prompt_tokens
        self._pending: queue.Queue[_Request | None] = queue.Queue()
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"echo-{version}")
        self._thread.start()

    @property
    def max_prompt_tokens(self) -> int:
        return self._max_prompt

    @property
    def queue_depth(self) -> int:
        return self._pending.qsize()

    def prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        if not any(m["role"] == "user" for m in messages):
            raise BadRequest("the messages need at least one user message", param="messages")
        text = expected_answer(self.version, messages)[len(self.version) + 2 :][::-1]
        return [ord(c) for c in text] or [0]

    def submit(
        self,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        *,
        n: int,
        request_id: str,
        on_event: Callable[[Event], None],
    ) -> _Request:
        with self._lock:
            if self._closed:
                raise EngineUnavailable("engine stopped")
            if self._count >= self.max_queue:
                raise QueueFull("echo engine queue is full")
            self._count += 1
        request = _Request("".join(chr(i) for i in prompt_ids), sampling, n, on_event)
        self._pending.put(request)
        return request

    def drain(self, timeout: float | None = None) -> bool:
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + (timeout or 0)
        while self._count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._count == 0

    def stop(self) -> None:
        with self._lock:
            self._closed = True
        self._pending.put(None)
        self._thread.join(5)
        self.stopped.set()

    def _run(self) -> None:
        while (request := self._pending.get()) is not None:
            threading.Thread(target=self._answer, args=(request,), daemon=True).start()
        self.stopped.set()

    def _answer(self, r: _Request) -> None:
        try:
            if self.gate is not None:
                self.gate.wait()
            full = f"{self.version}: {r.prompt[::-1]}"
            text, reason = (
                full[: r.sampling.max_tokens],
                "length" if len(full) > r.sampling.max_tokens else "stop",
            )
            for s in r.sampling.stop:
                if s in text:
                    text, reason = text[: text.index(s)], "stop"
            for i in range(r.n):
                for j, ch in enumerate(text):
                    if r.cancelled.is_set():
                        r.on_event(EngineUnavailable("cancelled"))
                        return
                    if self.token_delay_s:
                        time.sleep(self.token_delay_s)
                    r.on_event(Delta(i, ch, 1, reason if j == len(text) - 1 else None))
                if not text:
                    r.on_event(Delta(i, "", 0, reason))
            r.on_event(Finished((text,) * r.n, (reason,) * r.n, len(r.prompt), len(text) * r.n))
        finally:
            with self._lock:
                self._count -= 1


def echo_loader(
    loaded: list[str] | None = None, *, broken: set[str] | frozenset[str] = frozenset(), **engine_kw: object
) -> Callable[[str | None, int], Served]:
    """A follower loader that builds an :class:`EchoEngine` per version; versions in ``broken`` fail to load."""

    def load(version_id: str | None, epoch: int) -> Served:
        name = version_id or "base"
        if name in broken:
            raise ValueError(f"version {name} is corrupt")
        if loaded is not None:
            loaded.append(name)
        return Served(name, epoch, EchoEngine(name, **engine_kw))  # type: ignore[arg-type]

    return load


def complete(client: openai.OpenAI, prompt: str, *, max_tokens: int, stream: bool) -> tuple[set[str], str, str]:
    """One greedy chat completion through the official client, streamed or not: ``(the model names its chunks or
    reply gave, the x-qtha-version header, the text)``."""
    messages = [{"role": "user", "content": prompt}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="qtha", messages=messages, max_tokens=max_tokens, temperature=0, stream=True
        ) as raw:
            chunks = list(raw.parse())
            header = raw.headers["x-qtha-version"]
        return {c.model for c in chunks}, header, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    response = client.chat.completions.with_raw_response.create(
        model="qtha", messages=messages, max_tokens=max_tokens, temperature=0
    )
    reply = response.parse()
    return {reply.model}, response.headers["x-qtha-version"], reply.choices[0].message.content or ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(parts: ServeParts, *, wait_ready: bool = True, timeout_s: float = 60.0) -> Iterator[str]:
    """Serves ``parts`` with uvicorn in a thread on a free loopback port; yields the base URL."""
    port = free_port()
    process = ServeProcess.create(parts, host="127.0.0.1", port=port)
    process.server.config.timeout_graceful_shutdown = 2
    process.start_parts()
    thread = threading.Thread(target=process.server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not process.server.started or (wait_ready and not parts.follower.ready):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start (see the log)")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.server.should_exit = True
        thread.join(30)
        process.close_parts()


__all__ = ["EchoEngine", "complete", "echo_loader", "expected_answer", "free_port", "running"]
