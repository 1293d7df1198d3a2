"""Grouped-query attention kernels: a plain XLA path (always works) and fused backend paths."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from exo2ego_jax.models import splash

log = logging.getLogger(__name__)

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "dot_product", "splash")


@functools.cache
def resolve_impl(impl: str) -> str:
    """Picks the concrete kernel for this backend, logging once when a fused one is unavailable."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention_impl={impl!r}; expected one of {IMPLEMENTATIONS}.")
    backend = jax.default_backend()
    if impl == "auto":
        impl = {"gpu": "cudnn", "tpu": "dot_product"}.get(backend, "xla")
    if impl == "cudnn" and backend != "gpu":
        log.warning("attention_impl='cudnn' needs a GPU (backend is %s); using the XLA path.", backend)
        return "xla"
    if impl == "splash" and backend != "tpu":
        log.warning("attention_impl='splash' is a TPU kernel (backend is %s); using the XLA path.", backend)
        return "xla"
    return impl


@functools.cache
def warn_once(msg: str) -> None:
    log.warning(msg)


def xla_attention(q, k, v, mask, scale: float):
    """q [B,T,H,D], k/v [B,S,K,D], mask [B,T,S] bool (True = attend) -> [B,T,H,D].

    Query heads are grouped onto their KV head (H = K * G) rather than repeating K/V, so the KV
    cache is read once per group. Scores and softmax are float32.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def cached_attention(q, k_t, v, mask, scale: float):
    """Attention over a KV cache: q [B,T,H,D], keys k_t [B,K,D,S], values v [B,K,S,D], mask [B,T,S].

    The cache layouts are the matmul operand layouts, so a decode step reads the cache in place
    (with [B,S,K,D] XLA:CPU copies a transposed cache for every layer and step). The query heads of
    a group and the T positions share one matmul row block.
    """
    b, t, h, d = q.shape
    kv = k_t.shape[1]
    g = h // kv
    qg = q.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, d)
    scores = jnp.einsum("bkqd,bkds->bkqs", qg, k_t, preferred_element_type=jnp.float32) * scale
    scores = scores.reshape(b, kv, g, t, -1)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv, g * t, -1)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def attention(q, k, v, mask, scale: float, impl: str, *, causal_lengths=None, window: int = 0):
    """Dispatches to a kernel. ``causal_lengths`` [B] (right-padded, no cache) enables fused paths.

    The fused paths take causal masking plus per-row key lengths (right padding, as in training)
    and ``window`` (sliding window in tokens, 0 = none; ``mask`` already carries it for the XLA
    path); arbitrary masks (left padding, KV cache) always use the XLA path.
    """
    impl = resolve_impl(impl)
    if impl == "xla" or causal_lengths is None:
        return xla_attention(q, k, v, mask, scale)
    if impl == "splash":
        if splash.supported(q.shape[1]):
            return splash.splash_attention(q, k, v, causal_lengths, scale, window=window)
        warn_once(f"splash attention needs lengths that are multiples of {splash.BLOCK}; got "
                   f"{q.shape[1]}: using the XLA path for this shape.")
        return xla_attention(q, k, v, mask, scale)
    kwargs = dict(scale=scale, is_causal=True, query_seq_lengths=causal_lengths,
                  key_value_seq_lengths=causal_lengths,
                  # (left, right) keys around the query: the query and window - 1 before it.
                  local_window_size=(window - 1, 0) if window else None)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kwargs)
    return jax.nn.dot_product_attention(q, k, v, **kwargs)
