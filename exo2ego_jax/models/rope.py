"""Rotary position embeddings (HF "rotate_half" layout) with the rope_scaling variants we support.

``inv_frequencies`` follows transformers' ``modeling_rope_utils`` rope-init functions option by
option (same defaults, same float32 operation order), so a config means the same thing here and
in transformers. Types it does not implement raise by name instead of running as ``default``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

# "rope_freqs" is not a transformers type: llama.cpp's converter stores Llama-3 style scaling as a
# per-frequency divisor tensor (GGUF ``rope_freqs.weight``); weights/gguf.py reads it into
# ``freq_factors`` (inv_freq / freq_factors, exactly what llama.cpp computes).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "rope_freqs")
# Every rope-dict key inv_frequencies reads (for some type); LLMConfig.from_hf refuses
# partial_rotary_factor != 1, and keys of other types are refused with their type.
IMPLEMENTED_ROPE_KEYS = frozenset({
    "rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
    "mscale_all_dim", "truncate", "freq_factors"})


def rope_type(scaling: Mapping[str, Any] | None) -> str:
    scaling = dict(scaling or {})
    return scaling.get("rope_type", scaling.get("type", "default")) or "default"


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN paper eq. 21 (transformers ``yarn_get_mscale``): 0.1 * mscale * ln(scale) + 1."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def inv_frequencies(head_dim: int, theta: float, scaling: Mapping[str, Any] | None,
                    max_position_embeddings: int) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim/2] and the factor applied to cos/sin (1.0 except yarn).

    ``scaling`` is the rope dict (HF ``rope_scaling`` / ``rope_parameters``; a tuple of (key, value)
    pairs works too). Other types raise (their outputs would silently differ from the checkpoint's).
    """
    scaling = dict(scaling or {})
    kind = rope_type(scaling)
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    pos_freqs = np.float32(theta) ** exponents  # float32, as torch computes base ** arange(...).float()
    inv = (np.float32(1.0) / pos_freqs).astype(np.float32)
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return (inv / np.float32(scaling["factor"])).astype(np.float32), 1.0
    if kind == "rope_freqs":
        factors = np.asarray(scaling["freq_factors"], np.float32)
        if factors.shape != inv.shape:
            raise ValueError(f"rope freq_factors has shape {factors.shape}; head_dim {head_dim} needs "
                             f"{inv.shape} (one divisor per rotary frequency).")
        return (inv / factors).astype(np.float32), 1.0
    if kind == "llama3":
        factor = np.float32(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling.get("original_max_position_embeddings") or max_position_embeddings)
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = np.float32(2 * math.pi) / inv
        out = np.where(wavelen > low_wavelen, inv / factor, inv).astype(np.float32)
        smooth = ((old_ctx / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, out).astype(np.float32), 1.0
    if kind == "yarn":
        # transformers' standardize_rope_params defaults the pretraining length to max_position_embeddings.
        old_ctx = float(scaling.get("original_max_position_embeddings") or max_position_embeddings)
        factor = scaling.get("factor")
        factor = float(max_position_embeddings / old_ctx if factor is None else factor)
        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
            if mscale and mscale_all_dim:
                attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
            else:
                attention_factor = yarn_mscale(factor)
        beta_fast = float(scaling.get("beta_fast") or 32)
        beta_slow = float(scaling.get("beta_slow") or 1)

        def correction_dim(rotations):
            return (head_dim * math.log(old_ctx / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, head_dim - 1)
        if lo == hi:
            hi += 0.001  # transformers' guard against a zero-width ramp
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1)
        extrapolation = (1 - ramp).astype(np.float32)
        interpolation = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
        inv = interpolation * (1 - extrapolation) + inv * extrapolation
        return inv.astype(np.float32), float(attention_factor)
    raise ValueError(f"rope type {kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES[:-1])}); "
                     "its positions would differ from the checkpoint's. Use a checkpoint with a supported "
                     "rope type or implement it in models/rope.py.")


def rope_tables(positions: jnp.ndarray, inv_freq: np.ndarray, attention_scaling: float = 1.0,
                num_positions: int | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin [B, T, D] (float32, times ``attention_scaling``) of positions [B, T].

    ``num_positions``: a static bound, every position in [0, num_positions). The tables are then
    read from a [num_positions, D] table by position: the same values, but computed once per
    forward pass. Computed from the positions directly, XLA:CPU fuses the cos and sin into every
    consumer and evaluates them per element there: per head, in every layer, again in the
    backward (a SmolLM2-135M train step spent ~2% of its time on it).
    """
    inv = jnp.asarray(inv_freq, jnp.float32)
    if num_positions is None:
        freqs = positions.astype(jnp.float32)[..., None] * inv  # [B, T, D/2]
    else:
        freqs = jnp.arange(num_positions, dtype=jnp.float32)[:, None] * inv  # [P, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb) * attention_scaling, jnp.sin(emb) * attention_scaling
    if num_positions is not None:
        cos, sin = cos[positions], sin[positions]
    return cos, sin


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotates x [B, T, N, D] by ``rope_tables`` cos/sin [B, T, D] (float32 math, result in x's dtype)."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)
