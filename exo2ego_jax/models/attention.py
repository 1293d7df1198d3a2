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
    cache is read once per group. Scores and softmax are float32. The heads go in front
    (``grouped_attention``'s layouts) before the two matmuls: with rope in front of this, the
    transposes of q and k fuse into the rope pass.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    qh = q.reshape(b, t, kv, h // kv, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, h // kv * t, d)
    out = grouped_attention(qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, scale)
    return out.reshape(b, kv, h // kv, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


# Queries per block of the causal path (causal_xla_attention); 0 turns block skipping off.
CAUSAL_BLOCK = 128


def causal_xla_attention(q, k, v, mask, scale: float, block: int | None = None):
    """``xla_attention`` for a mask inside the causal triangle (no query attends to a later key,
    as in training without a cache): q [B,T,H,D], k/v [B,T,K,D], mask [B,T,T] bool -> [B,T,H,D].

    Query block i (``block`` positions) runs against keys of blocks 0..i only: the skipped keys
    are masked for all its queries, so their softmax weights are exactly 0 and the result is the
    same. With two blocks at T = 256 that is 1/4 fewer attention FLOPs and softmax elements, as
    torch's ``is_causal`` kernels skip the masked triangle. Other lengths run ``xla_attention``.
    """
    block = CAUSAL_BLOCK if block is None else block
    t = q.shape[1]
    if not block or k.shape[1] != t or t % block or t < 2 * block:
        return xla_attention(q, k, v, mask, scale)
    outs = [xla_attention(q[:, s:s + block], k[:, :s + block], v[:, :s + block],
                          mask[:, s:s + block, :s + block], scale) for s in range(0, t, block)]
    return jnp.concatenate(outs, axis=1)


def grouped_attention(q, k, v, mask, scale: float, *, keys_transposed: bool = False):
    """Head-major grouped-query attention: q [B,K,G*T,D], keys k [B,K,S,D] (or [B,K,D,S] with
    ``keys_transposed``), values v [B,K,S,D], mask [B,T,S] bool -> [B,K,G*T,D].

    The G query heads of a KV head and the T positions form one row block, and batch and KV head
    lead every operand: both matmuls, and the four of their gradients, are then plain batched
    matrix products. With [B,T,K,G,D] queries (einsum 'btkgd,bskd->bkgts') XLA:CPU transposes
    q, k, v, the output and, in the backward, the [B,K,G,T,S] probabilities and score gradients
    (bench/train_vs_torch.py --profile).
    """
    gt, t = q.shape[2], mask.shape[1]
    spec = "bkqd,bkds->bkqs" if keys_transposed else "bkqd,bksd->bkqs"
    scores = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) * scale
    # The mask repeated for the G heads of a row block ([B, 1, G*T, S], small): scores keep one
    # shape, so the backward keeps one copy of the probabilities (a [B,K,G,T,S] view for the
    # softmax next to the [B,K,G*T,S] operand of the second matmul makes it save both).
    rows_mask = jnp.tile(mask, (1, gt // t, 1))[:, None]
    probs = masked_softmax(scores, rows_mask).astype(v.dtype)
    return jnp.einsum("bkqs,bksd->bkqd", probs, v)


@jax.custom_vjp
def masked_softmax(scores, mask):
    """softmax(where(mask, scores, float32 min)) over the last axis; scores f32 [..., S], mask bool.

    The backward keeps only the probabilities and forms d scores = p * (dp - sum(dp * p)) in one
    pass after one row reduction. Differentiating ``jax.nn.softmax`` of the masked scores instead
    saves a broadcast copy of the row sums and the masked scores as well (per layer, score-sized
    buffers written in the forward and read in the backward).
    """
    return jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(scores.dtype).min), axis=-1)


def _masked_softmax_fwd(scores, mask):
    probs = masked_softmax(scores, mask)
    return probs, (probs, mask)


def _masked_softmax_bwd(res, d_probs):
    probs, mask = res
    d_probs = d_probs.astype(probs.dtype)
    d_scores = probs * (d_probs - jnp.sum(d_probs * probs, axis=-1, keepdims=True))
    # Masked positions have probability 0 (so gradient 0), as the where's gradient gives them.
    return d_scores, None


masked_softmax.defvjp(_masked_softmax_fwd, _masked_softmax_bwd)


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
    out = grouped_attention(qg, k_t, v, mask, scale, keys_transposed=True)
    return out.reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def attention(q, k, v, mask, scale: float, impl: str, *, causal_lengths=None, window: int = 0,
              causal: bool = False):
    """Dispatches to a kernel. ``causal_lengths`` [B] (right-padded, no cache) enables fused paths.

    The fused paths take causal masking plus per-row key lengths (right padding, as in training)
    and ``window`` (sliding window in tokens, 0 = none; ``mask`` already carries it for the XLA
    path); arbitrary masks (left padding, KV cache) always use the XLA path. ``causal``: ``mask``
    lets no query see a later key (no cache), so the XLA path may skip key blocks.
    """
    impl = resolve_impl(impl)
    xla_path = causal_xla_attention if causal else xla_attention
    if impl == "xla" or causal_lengths is None:
        return xla_path(q, k, v, mask, scale)
    if impl == "splash":
        if splash.supported(q.shape[1]):
            return splash.splash_attention(q, k, v, causal_lengths, scale, window=window)
        warn_once(f"splash attention needs lengths that are multiples of {splash.BLOCK}; got "
                   f"{q.shape[1]}: using the XLA path for this shape.")
        return xla_path(q, k, v, mask, scale)
    kwargs = dict(scale=scale, is_causal=True, query_seq_lengths=causal_lengths,
                  key_value_seq_lengths=causal_lengths,
                  # (left, right) keys around the query: the query and window - 1 before it.
                  local_window_size=(window - 1, 0) if window else None)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kwargs)
    return jax.nn.dot_product_attention(q, k, v, **kwargs)
