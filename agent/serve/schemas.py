"""Request bodies of the API, validated strictly: unknown fields and out-of-range values are refused (400) with
the offending field named, as OpenAI's API does.

Only the fields the server honours are accepted; a client that sends ``logprobs`` or ``tools`` learns at once that
they are not supported instead of getting an answer that silently ignored them.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.serve.errors import BadRequest

__all__ = ["ChatCompletionRequest", "ChatMessage", "FeedbackRequest", "StreamOptions", "parse_body"]

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    # "developer" is OpenAI's newer name for a system message.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        """The ``{"role", "content"}`` the chat template takes (text parts joined)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``. Server limits (max_tokens, n, prompt length) are checked by the app."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 non-empty stop strings")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class FeedbackRequest(_Strict):
    """``POST /v1/feedback``: a score in [0, 1], a correct answer, or both, for a served request."""

    request_id: str = Field(min_length=1, max_length=64)
    score: float | None = Field(default=None, ge=0.0, le=1.0)
    correct_answer: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _something(self) -> FeedbackRequest:
        if self.score is None and self.correct_answer is None:
            raise ValueError("give a score (0 to 1) or a correct_answer")
        return self


def _field(loc: tuple[Any, ...]) -> str | None:
    # ("messages", 0, "role") -> "messages[0].role"; union members' type tags ("str", "list[...]") are dropped.
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or None


def parse_body(model: type[M], data: Any) -> M:
    """Validates a decoded JSON body.

    Raises:
        BadRequest: the first problem, with ``param`` naming the field.
    """
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _field(tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            raise BadRequest(f"unknown field {param!r}; this server does not support it", param=param) from None
        if first["type"] == "missing":
            raise BadRequest(f"missing required field {param!r}", param=param) from None
        raise BadRequest(f"invalid {param or 'body'}: {first['msg']}", param=param) from None
