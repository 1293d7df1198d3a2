"""Exo2Ego's guidance losses: feature KL and L1 cycle consistency (VTG is the shared
answer-only cross-entropy of train/losses.py).

All losses are means over valid items; `mask` arguments are 1 for real items, 0 for padding,
and broadcast against the leading axes of the inputs. Computations run in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

KL_DIRECTIONS = ("exo_to_mapped", "mapped_to_exo")


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of `values` over entries where `mask` (broadcast over the trailing axes) is 1."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    mask = jnp.broadcast_to(mask, values.shape)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def feature_kl(exo: jax.Array, mapped: jax.Array, *, temperature: float = 1.0,
               direction: str = "exo_to_mapped", mask: jax.Array | None = None) -> jax.Array:
    """KL between per-token softmax distributions over the feature axis.

    direction="exo_to_mapped" is KL(softmax(y/t) || softmax(F(x)/t)) ([I] default, docs/papers.md),
    "mapped_to_exo" is KL(softmax(F(x)/t) || softmax(y/t)). `exo` (y) is wrapped in
    stop_gradient: the demonstrator only teaches. No t^2 factor is applied [I].

    Args:
      exo: [..., C] features of the frozen exo encoder (y).
      mapped: [..., C] F(x), same shape.
      mask: leading-axes mask (e.g. [N] over maps or [B, N] over tokens); None = all valid.
    """
    if exo.shape != mapped.shape:
        raise ValueError(f"feature_kl: exo features {exo.shape} and F(ego) {mapped.shape} must match")
    if direction not in KL_DIRECTIONS:
        raise ValueError(f"feature_kl: direction={direction!r}; expected one of {KL_DIRECTIONS}")
    log_y = jax.nn.log_softmax(jax.lax.stop_gradient(exo).astype(jnp.float32) / temperature, axis=-1)
    log_f = jax.nn.log_softmax(mapped.astype(jnp.float32) / temperature, axis=-1)
    p, log_p, log_q = (log_y, log_y, log_f) if direction == "exo_to_mapped" else (log_f, log_f, log_y)
    kl = jnp.sum(jnp.exp(p) * (log_p - log_q), axis=-1)
    return _masked_mean(kl, mask)


def l1(a: jax.Array, b: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean absolute difference over all elements of valid items (torch's L1Loss 'mean')."""
    return _masked_mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)), mask)


def cycle_loss(x: jax.Array, g_f_x: jax.Array, y: jax.Array | None = None,
               f_g_y: jax.Array | None = None, *, forward_only: bool = False,
               mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """E||G(F(x)) - x||_1 + E||F(G(y)) - y||_1 (Exo2Ego paper); forward_only drops the second.

    Returns (total, {"cycle_fwd": ..., "cycle_bwd": ...}).
    """
    fwd = l1(g_f_x, x, mask)
    parts = {"cycle_fwd": fwd}
    if forward_only:
        return fwd, parts
    if y is None or f_g_y is None:
        raise ValueError("cycle_loss: the backward term needs y and F(G(y)); pass them or forward_only=True")
    bwd = l1(f_g_y, y, mask)
    parts["cycle_bwd"] = bwd
    return fwd + bwd, parts
