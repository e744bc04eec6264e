"""Read a GGUF file (llama.cpp's format) into Hugging Face-named float32 tensors, a config and a tokenizer.

Only the metadata and tensors are read (``gguf.GGUFReader`` memory-maps the file); quantised tensors are
dequantised to float32 with ``gguf.quants.dequantize``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .config import LMConfig, UnsupportedModelError
from .tokenizer import Tokenizer, TokenizerError, tokenizer_from_vocab
from .weights import CheckpointError

# Architectures whose convert script permutes Q/K rows for llama.cpp's interleaved-pair RoPE. Qwen2 uses the
# NeoX (half-split) rotation, which is HF's own layout, so its Q/K are stored unpermuted.
_PERMUTED_QK_ARCHS = ("llama",)
_SUPPORTED_ARCHS = ("llama", "qwen2")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str) -> str | None:
    """``"blk.3.attn_q.weight"`` → ``"model.layers.3.self_attn.q_proj.weight"``; ``None`` if unknown."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    found = _BLOCK_RE.fullmatch(gguf_name)
    if found is None or found.group(2) not in _BLOCK_NAMES:
        return None
    layer, part, kind = found.groups()
    return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"


def unpermute_qk(tensor: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: interleaved (x0, y0, x1, y1, …) rows back to HF's halves (x…, y…).

    llama.cpp's convert script applies ``w.reshape(h, 2, d/2, …).swapaxes(1, 2)`` per head; this is its inverse.
    Works on weights ``[h·d, in]`` and biases ``[h·d]``.
    """
    rest = tensor.shape[1:]
    head_dim = tensor.shape[0] // n_heads
    return tensor.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(tensor.shape)


def read_gguf(path: str | Path) -> tuple[LMConfig, dict[str, np.ndarray], Tokenizer]:
    """The config, HF-named float32 tensors (HF layouts, Q/K unpermuted) and tokenizer of a GGUF file.

    Raises:
        CheckpointError: not a readable GGUF file, an unknown tensor, or a tensor type that cannot be dequantised.
        UnsupportedModelError: an architecture or option qtha does not implement.
        TokenizerError: a tokenizer that cannot be rebuilt.
    """
    import gguf  # imported here: only GGUF loading needs it

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, struct/IndexError… on corrupt or truncated files
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from exc
    meta = {name: field for name, field in reader.fields.items()}

    def value(key: str, default: Any = None) -> Any:
        field = meta.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception as exc:
            raise CheckpointError(f"{path}: metadata {key!r} is unreadable ({exc})") from exc

    arch = value("general.architecture")
    if arch not in _SUPPORTED_ARCHS:
        raise UnsupportedModelError(
            f"{path}: GGUF architecture {arch!r} is not supported; qtha reads {_SUPPORTED_ARCHS}"
        )
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            raise UnsupportedModelError(
                f"{path}: per-frequency RoPE factors (rope_freqs.weight, Llama 3.1-style scaling) are not supported "
                "from GGUF; load the model's Hugging Face directory instead"
            )
        name = hf_tensor_name(t.name)
        if name is None:
            raise CheckpointError(f"{path}: unknown tensor {t.name!r} for architecture {arch!r}")
        try:
            array = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        except Exception as exc:  # NotImplementedError for unsupported types, ValueError for bad sizes
            raise CheckpointError(
                f"{path}: cannot dequantize tensor {t.name!r} of type {t.tensor_type.name} ({exc})"
            ) from exc
        expected = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        if array.shape != expected:
            array = array.reshape(expected)
        tensors[name] = array
    cfg = _config_from_metadata(value, arch, tensors, path)
    if arch in _PERMUTED_QK_ARCHS:
        for name in list(tensors):
            if ".self_attn.q_proj." in name:
                tensors[name] = unpermute_qk(tensors[name], cfg.num_attention_heads)
            elif ".self_attn.k_proj." in name:
                tensors[name] = unpermute_qk(tensors[name], cfg.num_key_value_heads)
    tokenizer = _tokenizer_from_metadata(value, path)
    return cfg, tensors, tokenizer


def _config_from_metadata(value, arch: str, tensors: dict[str, np.ndarray], path: Path) -> LMConfig:
    def need(key: str) -> Any:
        v = value(f"{arch}.{key}")
        if v is None:
            raise CheckpointError(f"{path}: metadata {arch}.{key} is missing")
        return v

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    embed = tensors.get("model.embed_tokens.weight")
    if embed is None:
        raise CheckpointError(f"{path}: tensor token_embd.weight is missing")
    hf: dict[str, Any] = {
        "model_type": arch,
        "vocab_size": int(value(f"{arch}.vocab_size", embed.shape[0])),
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(value(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": int(value(f"{arch}.attention.key_length", hidden // heads)),
        "rms_norm_eps": _float32_meta(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32_meta(value(f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(value(f"{arch}.context_length", 2048)),
        "tie_word_embeddings": "lm_head.weight" not in tensors,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in tensors,
        "bos_token_id": value("tokenizer.ggml.bos_token_id"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
    }
    scaling_type = value(f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise UnsupportedModelError(f"{path}: GGUF RoPE scaling {scaling_type!r} is not supported (only linear)")
        hf["rope_scaling"] = {"rope_type": "linear", "factor": _float32_meta(value(f"{arch}.rope.scaling.factor", 1.0))}
    return LMConfig.from_hf_config(hf, source=str(path))


def _float32_meta(x: Any) -> float:
    # GGUF stores these as float32: 1e-5 reads back as 9.99999974e-06. Seven significant digits is all float32
    # holds, so rounding recovers the value the converter wrote (and HF and GGUF configs then compare equal).
    return float(f"{float(x):.7g}")


def _tokenizer_from_metadata(value, path: Path) -> Tokenizer:
    kind = value("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(
            f"{path}: GGUF tokenizer model {kind!r} is not supported; qtha rebuilds byte-level BPE ('gpt2') "
            "tokenizers only — use the model's Hugging Face directory with tokenizer.json"
        )
    tokens = value("tokenizer.ggml.tokens")
    merges = value("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens or tokenizer.ggml.merges is missing")
    try:
        return tokenizer_from_vocab(
            tokens,
            merges,
            value("tokenizer.ggml.token_type"),
            pre=value("tokenizer.ggml.pre", "default"),
            eos_id=value("tokenizer.ggml.eos_token_id"),
            bos_id=value("tokenizer.ggml.bos_token_id"),
            pad_id=value("tokenizer.ggml.padding_token_id"),
            chat_template=value("tokenizer.chat_template"),
        )
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}") from exc
