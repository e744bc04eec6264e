"""An independent plain-numpy Llama forward pass over Hugging Face-named tensors (the test oracle).

Written from the HF modelling code's equations, not from model/: weights in PyTorch layout ``[out, in]``,
``repeat_kv`` for grouped-query attention, ``rotate_half`` RoPE, an explicit causal mask.
"""

from __future__ import annotations

import numpy as np


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _rotate_pairs(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    # llama.cpp's "normal" RoPE: adjacent pairs (x[2j], x[2j+1]) rotate by frequency j.
    even, odd = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., : x.shape[-1] // 2], sin[..., : x.shape[-1] // 2]
    out = np.empty_like(x)
    out[..., 0::2] = even * c - odd * s
    out[..., 1::2] = even * s + odd * c
    return out


def reference_logits(hf_config: dict, tensors: dict[str, np.ndarray], ids: list[int],
                     dtype=np.float64, *, interleaved_rope: bool = False, last: int | None = None) -> np.ndarray:
    """Logits ``[T, V]`` for one unpadded sequence ``ids`` (no rope scaling).

    ``interleaved_rope=True`` rotates adjacent pairs, as llama.cpp does on GGUF's permuted Q/K weights: feeding it
    the raw GGUF tensors checks our un-permutation without using it. ``last=k`` returns only the last ``k``
    positions' logits (the vocabulary projection dominates the cost on a real model).
    """
    w = {k: np.asarray(v, dtype) for k, v in tensors.items()}
    d = hf_config["hidden_size"]
    n_heads = hf_config["num_attention_heads"]
    n_kv = hf_config["num_key_value_heads"]
    hd = hf_config.get("head_dim") or d // n_heads
    eps = hf_config["rms_norm_eps"]
    theta = hf_config["rope_theta"]
    t = len(ids)
    inv_freq = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    freqs = np.outer(np.arange(t, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb).astype(dtype), np.sin(emb).astype(dtype)  # [T, hd]
    causal = np.tril(np.ones((t, t), bool))
    x = w["model.embed_tokens.weight"][np.asarray(ids)]
    for layer in range(hf_config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)

        def proj(name, h=h, p=p):
            out = h @ w[p + f"self_attn.{name}.weight"].T
            bias = w.get(p + f"self_attn.{name}.bias")
            return out if bias is None else out + bias

        q = proj("q_proj").reshape(t, n_heads, hd).transpose(1, 0, 2)  # [H, T, hd]
        k = proj("k_proj").reshape(t, n_kv, hd).transpose(1, 0, 2)
        v = proj("v_proj").reshape(t, n_kv, hd).transpose(1, 0, 2)
        if interleaved_rope:
            q, k = _rotate_pairs(q, cos, sin), _rotate_pairs(k, cos, sin)
        else:
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        k = np.repeat(k, n_heads // n_kv, axis=0)  # repeat_kv
        v = np.repeat(v, n_heads // n_kv, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        scores = np.where(causal, scores, -np.inf)
        attn = (_softmax(scores) @ v).transpose(1, 0, 2).reshape(t, n_heads * hd)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x if last is None else x[-last:], w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T
