"""The answer-only cross-entropy every method trains with.

Batch contract (docs/ARCHITECTURE.md "Batches"): the label of position t is token t itself, and
IGNORE_INDEX marks positions that are not trained (prompt, video placeholders, padding). Position
t's logits predict token t + 1, so the loss shifts the *labels* left by one; the logits are never
sliced, which keeps their [B, T, V] layout (and sharding) as the model produced it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# LLaVA / VideoLLaMA IGNORE_INDEX. data/text.py writes the same value into its labels (the data
# layer may not import train/; tests/test_losses.py checks that the two agree).
IGNORE_INDEX = -100


def shifted_targets(labels: jax.Array, example_mask: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    """(targets [B, T] with targets[:, t] = labels[:, t + 1], valid [B, T] bool).

    The last position has no next token: it is never valid. `example_mask` [B] (0 = padding
    example) clears whole rows.
    """
    pad = jnp.full(labels[:, :1].shape, IGNORE_INDEX, labels.dtype)
    targets = jnp.concatenate([labels[:, 1:], pad], axis=1)
    valid = targets != IGNORE_INDEX
    if example_mask is not None:
        valid = valid & (example_mask[:, None] > 0)
    return jnp.where(valid, targets, 0), valid


def answer_cross_entropy(logits: jax.Array, labels: jax.Array, example_mask: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array]:
    """Mean next-token cross-entropy over answer tokens.

    Args:
      logits: [B, T, V]; position t predicts token t + 1.
      labels: [B, T] int32; label of position t is token t, IGNORE_INDEX = not trained.
      example_mask: [B], 0 drops an example (end-of-epoch padding, skipped inputs).

    Returns:
      (mean loss over answer tokens, number of answer tokens), both float32 scalars. With no answer
      token the loss is 0 (not NaN), so an empty micro-batch contributes nothing.
    """
    targets, valid = shifted_targets(labels, example_mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    n = jnp.sum(valid).astype(jnp.float32)
    return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(n, 1.0), n


def token_accuracy(logits: jax.Array, labels: jax.Array, example_mask: jax.Array | None = None
                   ) -> jax.Array:
    """Fraction of answer tokens whose argmax prediction is right (a metric: no gradient)."""
    targets, valid = shifted_targets(labels, example_mask)
    right = jnp.where(valid, jnp.argmax(jax.lax.stop_gradient(logits), -1) == targets, False)
    return jnp.sum(right) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
