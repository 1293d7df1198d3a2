"""Rotary position embeddings (HF "rotate_half" layout) with the rope_scaling variants we support."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np


def inv_frequencies(head_dim: int, theta: float, scaling: Mapping[str, Any] | None,
                    max_position_embeddings: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim/2] and the attention scaling factor (1.0 except yarn).

    Mirrors transformers' ``ROPE_INIT_FUNCTIONS`` for ``default``, ``linear``, ``llama3`` and
    ``yarn``; other types raise (their outputs would silently differ from the checkpoint's).
    """
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim)
    if not scaling:
        return inv, 1.0
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / float(scaling["factor"]), 1.0
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, out).astype(np.float32), 1.0
    if kind == "yarn":
        factor = float(scaling["factor"])
        old_ctx = float(scaling.get("original_max_position_embeddings") or max_position_embeddings)
        beta_fast, beta_slow = float(scaling.get("beta_fast") or 32), float(scaling.get("beta_slow") or 1)
        mscale = scaling.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

        def dim(rot):
            return (head_dim * math.log(old_ctx / (rot * 2 * math.pi))) / (2 * math.log(theta))

        lo, hi = math.floor(dim(beta_fast)), math.ceil(dim(beta_slow))
        lo, hi = max(lo, 0), min(hi, head_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - lo) / (hi - lo), 0, 1)
        extrapolation = 1 - ramp
        inv = (inv / factor) * (1 - extrapolation) + inv * extrapolation
        return inv.astype(np.float32), float(mscale)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, "
                     "llama3, yarn); remove it from the config or add it in models/rope.py.")


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray,
               attention_scaling: float = 1.0) -> jnp.ndarray:
    """Rotates x [B, T, N, D] by positions [B, T] (float32 math, result in x's dtype)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos = (jnp.cos(emb) * attention_scaling)[:, :, None, :]
    sin = (jnp.sin(emb) * attention_scaling)[:, :, None, :]
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)
