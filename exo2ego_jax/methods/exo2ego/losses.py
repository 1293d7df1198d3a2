"""Exo2Ego losses (METHODS.md part A): VTG, feature KL, and L1 cycle consistency.

All losses are means over valid items; `mask` arguments are 1 for real items, 0 for padding,
and broadcast against the leading axes of the inputs. Computations run in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_INDEX = -100
KL_DIRECTIONS = ("exo_to_mapped", "mapped_to_exo")


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of `values` over entries where `mask` (broadcast over the trailing axes) is 1."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    mask = jnp.broadcast_to(mask, values.shape)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def vtg_loss(logits: jax.Array, labels: jax.Array,
             example_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Video-grounded text generation loss: next-token cross-entropy on answer tokens.

    Args:
      logits: [B, T, V]; position t predicts token t + 1.
      labels: [B, T]; the label of position t is token t (the batch contract), -100 = not trained.
      example_mask: [B], 0 drops an example (padding at the end of an epoch).

    Returns:
      (mean loss over trained tokens, number of trained tokens as float32).
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    if example_mask is not None:
        valid = valid & (example_mask[:, None] > 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, targets, 0))
    n = jnp.sum(valid).astype(jnp.float32)
    return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(n, 1.0), n


def feature_kl(exo: jax.Array, mapped: jax.Array, *, temperature: float = 1.0,
               direction: str = "exo_to_mapped", mask: jax.Array | None = None) -> jax.Array:
    """KL between per-token softmax distributions over the feature axis.

    direction="exo_to_mapped" is KL(softmax(y/t) || softmax(F(x)/t)) (METHODS.md [I] default),
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
    """E||G(F(x)) - x||_1 + E||F(G(y)) - y||_1 (METHODS.md part A); forward_only drops the second.

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
