"""Batched decoding for serving and sampling: a continuous-batching engine over a slot KV cache."""

from .engine import DecodeEngine, RequestHandle
from .records import (
    Choice,
    EngineClosedError,
    EngineConfig,
    EngineError,
    GenerationResult,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    RequestCancelledError,
    SamplingParams,
    StreamEvent,
    Usage,
)

__all__ = [
    "Choice",
    "DecodeEngine",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "GenerationResult",
    "InvalidRequestError",
    "PromptTooLongError",
    "QueueFullError",
    "RequestCancelledError",
    "RequestHandle",
    "SamplingParams",
    "StreamEvent",
    "Usage",
]
