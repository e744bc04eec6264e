"""What the HTTP layer needs from a decoding engine, in the server's own types.

The app never sees ``model``'s types: :mod:`agent.serve.loader` wraps the model's ``DecodeEngine`` into this
protocol and translates its exceptions into :mod:`agent.serve.errors`, so the model import stays in one module
and a test can serve from a stand-in engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Delta", "Engine", "Finished", "Handle", "Sampling", "Served"]


@dataclass(frozen=True)
class Sampling:
    """A request's decoding settings (already validated against the server's limits)."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None


@dataclass(frozen=True)
class Delta:
    """New text of one choice; ``finish_reason`` ("stop" | "length") on the choice's last delta."""

    index: int
    text: str
    tokens: int
    finish_reason: str | None


@dataclass(frozen=True)
class Finished:
    """A request's end: every choice's whole text and finish reason, and the token counts."""

    texts: tuple[str, ...]
    finish_reasons: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int


# What an engine reports to a request, on the engine's thread: deltas, then one Finished or one exception.
Event = Delta | Finished | BaseException


class Handle(Protocol):
    def cancel(self) -> None:
        """Stops the request at the next decoding step and frees its slots."""
        ...


class Engine(Protocol):
    """A loaded, warmed model that decodes many requests together.

    ``submit`` is thread-safe and returns at once; ``on_event`` is called on the engine's thread and must not
    block. It raises :class:`~agent.serve.errors.BadRequest`, ``PayloadTooLarge``, ``QueueFull`` or
    ``EngineUnavailable``.
    """

    @property
    def max_prompt_tokens(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...

    def prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The chat template applied to ``messages`` and encoded (raises BadRequest for malformed messages)."""
        ...

    def submit(
        self,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        *,
        n: int,
        request_id: str,
        on_event: Callable[[Event], None],
    ) -> Handle: ...

    def drain(self, timeout: float | None = None) -> bool:
        """Refuses new requests and waits for the running ones; True when all finished in time."""
        ...

    def stop(self) -> None:
        """Cancels whatever still runs and releases the engine's thread and memory."""
        ...


@dataclass(frozen=True)
class Served:
    """A version ready to answer: its id (``"base"`` before the first promotion), the champion epoch it was
    loaded for, and its engine."""

    version_id: str
    epoch: int
    engine: Engine
