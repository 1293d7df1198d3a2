"""Answer-only next-token cross-entropy: the plain form on logits and a chunked LM-head form.

Batch contract (docs/ARCHITECTURE.md "Batches"): ``labels[b, t]`` is token t of the row, or
``IGNORE_INDEX`` where no loss is taken; position t predicts token t + 1. Both losses shift the
*labels* one step left (the last position gets ``IGNORE_INDEX``) instead of slicing
``logits[:, :-1]``: a slice of the [B, T, V] logits makes XLA build the logits gradient as a
padded copy (and on CPU once more transposed), which was ~14% of a train step. Neither loss
computes an argmax: metrics such as token accuracy are computed outside the gradient path.

``chunked_answer_cross_entropy`` takes the final hidden states and the LM-head kernel and never
materialises the [B, T, V] float32 logits: a custom VJP runs over chunks of tokens, keeping only
one [chunk, V] block alive: under differentiation the forward pass also forms the gradients
chunk by chunk (the loss is a scalar at the end of the graph), so nothing is recomputed. With a 32k-152k vocabulary that block is what
decides the activation memory of a long-sequence step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# LLaVA / VideoLLaMA IGNORE_INDEX. data/text.py writes the same value into its labels (the data
# layer may not import train/; tests/test_losses.py checks that the two agree).
IGNORE_INDEX = -100


def shifted_targets(labels: jax.Array, example_mask: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    """labels [B, T] -> (targets [B, T] int32 with IGNORE_INDEX replaced by 0, valid [B, T] bool).

    targets[:, t] = labels[:, t + 1] (what position t predicts); the last position is invalid.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be [B, T] int, got shape {labels.shape}")
    labels = labels.astype(jnp.int32)
    nxt = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)
    valid = nxt != IGNORE_INDEX
    if example_mask is not None:
        valid = valid & (example_mask.reshape(-1, 1) > 0)
    return jnp.where(valid, nxt, 0), valid


def _target_logit(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits [..., V] f32, targets [...] -> logits at the target (an elementwise select + sum).

    A compare-with-iota select fuses into one elementwise pass in forward and backward, where
    ``take_along_axis`` backpropagates through a scatter into a zero-filled logits-sized buffer.
    """
    vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)


def answer_cross_entropy(logits: jax.Array, labels: jax.Array, example_mask: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array]:
    """Mean next-token cross-entropy over answer tokens.

    Args:
      logits: [B, T, V] (any float dtype; the loss runs in float32). Position t predicts token t+1.
      labels: [B, T] int; label of position t is token t, IGNORE_INDEX (-100) = no loss.
      example_mask: [B], 0 drops the whole row (epoch-end padding); None = all rows real.

    Returns:
      (mean loss over answer tokens, f32 scalar; number of answer tokens, f32 scalar).
      With no answer token the loss is 0 (and so is its gradient), not NaN.
    """
    if logits.ndim != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits must be [B, T, V] matching labels [B, T]; got logits {logits.shape}, "
                         f"labels {labels.shape}")
    targets, valid = shifted_targets(labels, example_mask)
    logits = logits.astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, axis=-1) - _target_logit(logits, targets)  # [B, T]
    n = jnp.sum(valid).astype(jnp.float32)
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(n, 1.0), n


def label_log_likelihood(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sum of log p(label tokens) per row [B]: option / caption scoring at evaluation (no gradient).

    logits [B, T, V] (position t predicts token t+1), labels [B, T] (IGNORE_INDEX = not scored).
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tgt = labels[:, 1:]
    valid = tgt != IGNORE_INDEX
    lp = jnp.take_along_axis(logp, jnp.where(valid, tgt, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, lp, 0.0), axis=-1)


# --- chunked LM head ------------------------------------------------------------------------------
def _chunk_logits(h: jax.Array, kernel: jax.Array) -> jax.Array:
    """h [C, D] @ kernel [D, V] -> [C, V] float32 (accumulated in f32 whatever the input dtype)."""
    return jnp.dot(h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)


def _chunk_target_logits(h: jax.Array, kernel: jax.Array, targets: jax.Array) -> jax.Array:
    """h [C, D], targets [C] -> logit of each token's target [C] f32, from its kernel column.

    A [D, C] gather and a row dot: no second pass over the chunk's [C, V] logits.
    """
    cols = jnp.take(kernel, targets, axis=1).astype(jnp.float32)  # [D, C]
    return jnp.einsum("cd,dc->c", h.astype(jnp.float32), cols)


def _weighted_nll_impl(h, kernel, targets, weights, with_grads: bool):
    """(sum(weights * nll), number of top-1-correct weighted tokens) over chunks; with
    ``with_grads`` also the loss's gradients w.r.t. h and kernel.

    The gradients are formed chunk by chunk in the same pass (softmax - onehot, times the
    token's weight), so the LM-head matmul runs once forward and twice for the gradients, as with
    materialised logits, but only one [C, V] block is ever alive. The token-accuracy count reads
    the same block (no gradient, no second LM-head matmul).
    """
    def one(dk, xs):
        hc, tc, wc = xs
        if h.shape[0] == 1:  # one chunk: nothing to skip (and no branch between kernel and matmul)
            return one_chunk(dk, hc, tc, wc)
        # A chunk without a labelled token contributes nothing: skip its LM-head matmuls.
        skip = lambda dk, hc, tc, wc: (dk, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
                                            None if not with_grads else jnp.zeros_like(hc)))
        return jax.lax.cond(jnp.any(wc != 0), one_chunk, skip, dk, hc, tc, wc)

    def one_chunk(dk, hc, tc, wc):
        logits = _chunk_logits(hc, kernel)  # [C, V] f32
        row_max = jnp.max(logits, axis=-1)  # [C]
        shifted = logits - row_max[:, None]
        # The select changes nothing (NaN stays NaN) but keeps this exp-sum out of XLA:CPU's YNN
        # library, which runs it at 0.7x of XLA's own fused loop ([1024, 49152]: 132 vs 90 ms).
        lse = row_max + jnp.log(jnp.sum(jnp.where(jnp.isnan(shifted), shifted, jnp.exp(shifted)), axis=-1))
        total = jnp.sum(wc * (lse - _chunk_target_logits(hc, kernel, tc)))
        # Top-1 without an argmax: the target's logit, read from the block, reaches the row max (a
        # tie counts as right). XLA:CPU's argmax is a variadic reduce at ~1/10 of a max's speed
        # (110 vs 11 ms for [1024, 49152]): 2% of a SmolLM2-135M train step.
        target_logit = jnp.take_along_axis(logits, tc[:, None], axis=1)[:, 0]
        right = jnp.sum(jnp.where((wc > 0) & (target_logit >= row_max), 1.0, 0.0))
        if not with_grads:
            return dk, (total, right, None)
        vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
        # d nll / d logits = softmax - onehot(target), scaled by the token's weight.
        dlogits = ((jnp.exp(logits - lse[:, None]) - (vocab == tc[:, None])) * wc[:, None]).astype(hc.dtype)
        dh = jnp.dot(dlogits, kernel.astype(hc.dtype).T, preferred_element_type=jnp.float32).astype(hc.dtype)
        dk = dk + jnp.dot(hc.T, dlogits, preferred_element_type=jnp.float32)
        return dk, (total, right, dh)

    dk0 = jnp.zeros(kernel.shape, jnp.float32) if with_grads else None
    dk, (totals, rights, dh) = jax.lax.scan(one, dk0, (h, targets, weights))
    return jnp.sum(totals), jnp.sum(rights), dh, (dk.astype(kernel.dtype) if with_grads else None)


@jax.custom_vjp
def _weighted_nll(h, kernel, targets, weights):
    """h [K, C, D], kernel [D, V], targets [K, C] int32, weights [K, C] f32
    -> (sum(w * nll), top-1-correct tokens among w > 0); the count has no gradient."""
    return _weighted_nll_impl(h, kernel, targets, weights, with_grads=False)[:2]


def _weighted_nll_fwd(h, kernel, targets, weights):
    # The loss is a scalar at the end of the graph: its gradients for a unit cotangent are computed
    # now (no recomputation of the logits in the backward) and scaled by the cotangent later.
    total, right, dh, dk = _weighted_nll_impl(h, kernel, targets, weights, with_grads=True)
    return (total, right), (dh, dk, weights)


def _weighted_nll_bwd(res, g):
    dh, dk, weights = res
    g = g[0]  # the correct-token count is a metric: its cotangent is ignored
    # Integer targets get no cotangent; the weights (derived from labels) are not differentiated.
    return (g * dh).astype(dh.dtype), (g * dk).astype(dk.dtype), None, jnp.zeros_like(weights)


_weighted_nll.defvjp(_weighted_nll_fwd, _weighted_nll_bwd)


def _chunked(hidden, head_kernel, labels, example_mask, chunk_size):
    """-> (mean loss, answer tokens, token accuracy) without the [B, T, V] logits."""
    if hidden.ndim != 3 or hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden must be [B, T, D] matching labels [B, T]; got hidden {hidden.shape}, "
                         f"labels {labels.shape}")
    if head_kernel.ndim != 2 or head_kernel.shape[0] != hidden.shape[-1]:
        raise ValueError(f"head_kernel must be [D, V] with D = {hidden.shape[-1]}; got {head_kernel.shape}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}; expected >= 1")
    b, t, d = hidden.shape
    targets, valid = shifted_targets(labels, example_mask)
    n = jnp.sum(valid).astype(jnp.float32)
    # The mean's 1/n goes into the per-token weights, so the backward scales each chunk once.
    weights = valid.astype(jnp.float32) / jnp.maximum(n, 1.0)
    # Chunks run over the sequence axis with every batch row in each chunk: a batch-sharded
    # [B, T, D] stays batch-sharded inside every chunk (chunking the flattened B*T tokens would
    # make the scan walk over the data-parallel axis).
    span = max(1, min(t, chunk_size // b))  # positions per chunk
    if span < t:
        # Labelled positions first in every row (stably): a chunk past every row's last label is
        # skipped (_weighted_nll_impl), so answer-only batches (mostly prompt and visual tokens)
        # run the LM head on about the answer tokens only. Per-row: batch sharding is kept.
        order = jnp.argsort(~valid, axis=1, stable=True)  # [B, T]
        hidden = jnp.take_along_axis(hidden, order[..., None], axis=1)
        targets, weights = jnp.take_along_axis(targets, order, 1), jnp.take_along_axis(weights, order, 1)
    pad = -t % span
    if pad:  # padded positions have weight 0: no loss, no gradient
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, weights = jnp.pad(targets, ((0, 0), (0, pad))), jnp.pad(weights, ((0, 0), (0, pad)))
    k = (t + pad) // span

    def chunks(x):  # [B, K*span, ...] -> [K, B*span, ...]
        x = x.reshape(b, k, span, *x.shape[2:]).swapaxes(0, 1)
        return x.reshape(k, b * span, *x.shape[3:])

    loss, right = _weighted_nll(chunks(hidden), head_kernel, chunks(targets), chunks(weights))
    return loss, n, right / jnp.maximum(n, 1.0)


def chunked_answer_cross_entropy(hidden: jax.Array, head_kernel: jax.Array, labels: jax.Array,
                                 example_mask: jax.Array | None = None, *, chunk_size: int = 1024
                                 ) -> tuple[jax.Array, jax.Array]:
    """``answer_cross_entropy(hidden @ head_kernel, labels, example_mask)`` without the logits.

    Args:
      hidden: [B, T, D] final (normed) hidden states of the decoder.
      head_kernel: [D, V] LM-head kernel (for tied embeddings: the embedding table transposed).
      labels, example_mask: as ``answer_cross_entropy``.
      chunk_size: tokens per chunk (all B rows x chunk_size // B positions, at least one);
        peak extra memory is about 2 x chunk_size x V float32 (one chunk's logits and gradient).

    Returns:
      The same (loss, number of answer tokens) as ``answer_cross_entropy`` on the full logits.
    """
    loss, n, _ = _chunked(hidden, head_kernel, labels, example_mask, chunk_size)
    return loss, n


def answer_loss_and_accuracy(output: jax.Array, labels: jax.Array, example_mask: jax.Array | None = None,
                             *, head_kernel: jax.Array | None = None, chunk_size: int = 0
                             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The methods' LM loss: (mean answer cross-entropy, answer tokens, token accuracy).

    ``chunk_size`` 0: ``output`` is the logits [B, T, V] (plain loss; ``head_kernel`` unused).
    ``chunk_size`` N > 0: ``output`` is the final hidden states [B, T, D] and ``head_kernel`` the
    [D, V] LM head; the chunked loss never forms the [B, T, V] logits, and the accuracy is counted
    on each chunk's logits block in the same pass (config.hardware.loss_chunk_size picks N).
    The accuracy never carries a gradient.
    """
    if chunk_size == 0:
        loss, n = answer_cross_entropy(output, labels, example_mask)
        return loss, n, token_accuracy(output, labels, example_mask)
    if head_kernel is None:
        raise ValueError(f"chunk_size={chunk_size} needs the LM head kernel [D, V] (head_kernel=...)")
    return _chunked(output, head_kernel, labels, example_mask, chunk_size)


def token_accuracy(logits: jax.Array, labels: jax.Array, example_mask: jax.Array | None = None
                   ) -> jax.Array:
    """Fraction of answer tokens whose argmax prediction is right (a metric: no gradient)."""
    targets, valid = shifted_targets(labels, example_mask)
    right = jnp.where(valid, jnp.argmax(jax.lax.stop_gradient(logits), -1) == targets, False)
    return jnp.sum(right) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
