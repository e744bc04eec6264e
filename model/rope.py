"""Rotary position embeddings in Hugging Face's half-split layout, with linear and Llama-3 frequency scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .config import LMConfig, UnsupportedModelError


def inverse_frequencies(cfg: LMConfig) -> np.ndarray:
    """The ``head_dim / 2`` rotary inverse frequencies after the config's scaling, as float32.

    Computed in float64 numpy (it is a constant of the architecture) so every caller agrees bit for bit.

    Raises:
        UnsupportedModelError: an unknown ``rope_type``.
    """
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = cfg.rope_scaling_dict()
    if scaling is None:
        return inv.astype(np.float32)
    kind = scaling["rope_type"]
    factor = float(scaling["factor"])
    if kind == "linear":
        # Linear (position-interpolation) scaling divides every position by factor, i.e. every frequency.
        return (inv / factor).astype(np.float32)
    if kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        low_wavelen, high_wavelen = old_len / low, old_len / high
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise UnsupportedModelError(f"rope_scaling type {kind!r} is not supported")


def rotary_cos_sin(inv_freq: jnp.ndarray, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin tables ``[B, T, head_dim]`` for integer ``positions [B, T]`` (frequencies repeated twice)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate ``x [B, T, heads, head_dim]``: HF's ``x·cos + rotate_half(x)·sin`` (halves, not adjacent pairs)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]
