"""The language model's architecture, read from a Hugging Face ``config.json`` (Llama / Qwen2 / Mistral family)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """A checkpoint's architecture or one of its options is outside what qtha's model implements."""


@dataclass(frozen=True)
class LMConfig:
    """Architecture of a decoder-only Llama-family model; field names follow Hugging Face ``config.json``.

    Attributes:
        rope_scaling: ``None`` or a normalised mapping stored as a sorted tuple of ``(key, value)`` pairs so the
            config stays hashable (usable as a static argument to ``jax.jit``); read it with
            :meth:`rope_scaling_dict`.
        attention_bias: whether q/k/v projections have a bias (Qwen2 has; Llama has not).

    Example:
        >>> cfg = LMConfig.from_hf_config({"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128,
        ...     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2})
        >>> cfg.head_dim
        16
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 2048
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise UnsupportedModelError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}; grouped-query attention needs it to be"
            )
        if self.head_dim % 2:
            raise UnsupportedModelError(f"head_dim={self.head_dim} is odd; rotary embeddings need an even one")

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def rope_scaling_dict(self) -> dict[str, Any] | None:
        """The RoPE scaling options as a plain dict (``rope_type`` normalised), or ``None``."""
        return dict(self.rope_scaling) if self.rope_scaling is not None else None

    def to_hf_config(self) -> dict[str, Any]:
        """A ``config.json`` dict that :meth:`from_hf_config` reads back into an equal config."""
        out: dict[str, Any] = {
            "architectures": [{"qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}.get(
                self.model_type, "LlamaForCausalLM")],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        }
        if self.bos_token_id is not None:
            out["bos_token_id"] = self.bos_token_id
        if self.eos_token_id is not None:
            out["eos_token_id"] = self.eos_token_id
        return out

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], *, source: str = "config.json") -> LMConfig:
        """Parse a Hugging Face ``config.json`` dict.

        Args:
            cfg: the parsed JSON.
            source: where it came from, for error messages.

        Raises:
            UnsupportedModelError: an architecture, activation or RoPE scaling qtha does not implement, or a
                missing required field.
        """
        model_type = str(cfg.get("model_type", "llama"))
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {model_type!r} is not supported; qtha implements {SUPPORTED_MODEL_TYPES} "
                "(decoder-only Llama-family models)"
            )
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedModelError(f"{source}: hidden_act {act!r} is not supported; only SwiGLU (silu) is")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if k not in cfg]
        if missing:
            raise UnsupportedModelError(f"{source}: missing required field(s) {missing}")
        heads = int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or int(cfg["hidden_size"]) // heads
        eos = cfg.get("eos_token_id")
        if isinstance(eos, list):  # some configs list several stop ids; the first is the primary one
            eos = eos[0] if eos else None
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6 if model_type == "qwen2" else 1e-5)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rope_scaling=_normalise_rope_scaling(cfg.get("rope_scaling"), source),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            # Qwen2's config has no attention_bias key, yet its q/k/v projections carry biases.
            attention_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            model_type=model_type,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> LMConfig:
        """Read and parse a ``config.json`` file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UnsupportedModelError(f"{path}: cannot read the model config ({exc})") from exc
        return cls.from_hf_config(data, source=str(path))


def _normalise_rope_scaling(raw: Any, source: str) -> tuple[tuple[str, Any], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise UnsupportedModelError(f"{source}: rope_scaling must be an object, got {raw!r}")
    rope_type = raw.get("rope_type", raw.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{source}: rope_scaling type {rope_type!r} is not supported; use one of {SUPPORTED_ROPE_TYPES}"
        )
    if rope_type == "default":
        return None
    out = {k: v for k, v in raw.items() if k not in ("type", "rope_type") and isinstance(v, int | float | str)}
    out["rope_type"] = rope_type
    if "factor" not in out or not math.isfinite(float(out["factor"])) or float(out["factor"]) <= 0:
        raise UnsupportedModelError(f"{source}: rope_scaling {dict(raw)} needs a positive 'factor'")
    return tuple(sorted(out.items()))
