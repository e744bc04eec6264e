"""The engine's typed records: sampling settings, configuration, stream events, results, and its errors."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Choice",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "GenerationResult",
    "InvalidRequestError",
    "PromptTooLongError",
    "QueueFullError",
    "RequestCancelledError",
    "SamplingParams",
    "StreamEvent",
    "Usage",
]

MAX_STOP_STRINGS = 4


class InvalidRequestError(ValueError):
    """A request the engine cannot run as given; ``param`` names the offending field (OpenAI's ``param``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit the engine's per-sequence capacity (an HTTP server answers 413)."""


class QueueFullError(RuntimeError):
    """The engine's bounded queue of waiting requests is full; retry later (an HTTP server answers 429 or 503)."""


class EngineClosedError(RuntimeError):
    """The engine is draining or stopped: it takes no new requests, or it stopped before this one finished."""


class RequestCancelledError(RuntimeError):
    """The request was cancelled before it finished."""


class EngineError(RuntimeError):
    """The decoding step itself failed (an XLA or model error); the requests in the batch failed with it."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Attributes:
        max_tokens: the most tokens generated per choice (at least 1).
        temperature: 0 for greedy decoding (the default), else the softmax temperature.
        top_p: nucleus sampling: sample from the smallest set of most likely tokens whose probability reaches
            ``top_p`` (1 keeps all). Ignored when greedy.
        stop: stop strings: a choice ends before the first occurrence of any of them (at most 4, non-empty).
        seed: makes a sampled answer reproducible, whatever else the engine runs at the same time. ``None``: a
            fresh seed from the engine's generator.
        ignore_eos: keep generating through end-of-turn tokens until ``max_tokens`` (benchmarks).

    Raises:
        InvalidRequestError: a value out of range (``param`` names the field).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens={self.max_tokens!r}; it must be an integer >= 1", param="max_tokens")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequestError(f"temperature={self.temperature!r}; it must be >= 0", param="temperature")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p={self.top_p!r}; it must be in (0, 1]", param="top_p")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if len(self.stop) > MAX_STOP_STRINGS or any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidRequestError(
                f"stop={list(self.stop)!r}; give at most {MAX_STOP_STRINGS} non-empty strings", param="stop"
            )
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidRequestError(f"seed={self.seed!r}; it must be an integer", param="seed")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class EngineConfig:
    """Shapes and limits of a :class:`DecodeEngine` (each distinct shape is one compilation).

    Attributes:
        max_slots: sequences decoded together; the decode step always runs this batch (free slots idle).
        capacity: KV-cache positions per sequence: prompt plus completion tokens.
        max_queue: requests waiting for a slot; one more raises :class:`QueueFullError`.
        chunk_tokens: tokens decoded per compiled call; streamed in chunks of this size. Larger amortises the
            host round trip, smaller lets new requests join sooner and wastes fewer steps after a stop.
        prefill_buckets: prompt lengths prompts are padded up to (ascending; the last must equal capacity).
            ``None``: powers of two from 32 up to ``capacity``.
        span_buckets: how much of the cache the decode step attends over, chosen per chunk as the smallest that
            covers the longest active sequence. ``None``: powers of four from 128 up to ``capacity`` (attention
            over unused positions is cheap next to the weights; each bucket is a compilation per slot bucket).
        slot_buckets: how many of the lowest slots a decode step runs, chosen per chunk as the smallest that
            covers the highest live slot (ascending, ending at ``max_slots``). ``None``: 1, 4, 16, … (powers of
            four) and ``max_slots``.
        scan_layers: run the decoder blocks under ``lax.scan`` (one compiled block, stacked weights): compiles
            ~2-3x faster, decodes ~20% slower on CPU. For short-lived engines whose warm-up dominates.
        sample_top_k: sampling (temperature > 0) draws among this many most likely tokens (then top_p); a full
            sort of a large vocabulary per step costs more than the forward pass on CPU.
    """

    max_slots: int = 16
    capacity: int = 1024
    max_queue: int = 64
    chunk_tokens: int = 8
    prefill_buckets: tuple[int, ...] | None = None
    span_buckets: tuple[int, ...] | None = None
    slot_buckets: tuple[int, ...] | None = None
    scan_layers: bool = False
    sample_top_k: int = 256

    def __post_init__(self) -> None:
        for name in ("max_slots", "capacity", "chunk_tokens", "sample_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name}={getattr(self, name)}; it must be at least 1")
        if self.max_queue < 0:
            raise ValueError(f"EngineConfig.max_queue={self.max_queue}; it must be >= 0")
        for name, last in (("prefill_buckets", "capacity"), ("span_buckets", "capacity"), ("slot_buckets", "max_slots")):
            given, end = getattr(self, name), getattr(self, last)
            if given is not None and (list(given) != sorted(set(given)) or given[-1] != end or given[0] < 1):
                raise ValueError(f"EngineConfig.{name}={given}: ascending, positive, ending at {last}={end}")

    def prefill_sizes(self) -> tuple[int, ...]:
        return self.prefill_buckets or _powers(32, self.capacity, 2)

    def span_sizes(self) -> tuple[int, ...]:
        return self.span_buckets or _powers(128, self.capacity, 4)

    def slot_sizes(self) -> tuple[int, ...]:
        return self.slot_buckets or _powers(1, self.max_slots, 4)


def _powers(low: int, cap: int, base: int) -> tuple[int, ...]:
    out, size = [], low
    while size < cap:
        out.append(size)
        size *= base
    return (*out, cap)


@dataclass(frozen=True)
class StreamEvent:
    """New output of one choice of one request, delivered after every decode chunk.

    Attributes:
        request_id: the request's id.
        index: the choice (0 … n-1).
        text: text added since this choice's previous event (possibly empty: text held back while it may be the
            start of a stop string or of an incomplete UTF-8 character).
        token_ids: token ids added since the previous event (a final end-of-turn token excluded).
        finish_reason: ``None`` while the choice runs; ``"stop"`` or ``"length"`` on its last event.
    """

    request_id: str
    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None


@dataclass(frozen=True)
class Choice:
    """One finished completion: its text (special tokens and a matched stop string removed), ids and reason."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


@dataclass(frozen=True)
class Usage:
    """Token counts of one request: prompt once, completion summed over choices (an end-of-turn token counts)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class GenerationResult:
    """The final answer to one request."""

    request_id: str
    choices: tuple[Choice, ...]
    usage: Usage
