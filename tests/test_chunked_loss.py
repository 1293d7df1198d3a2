"""train/losses.py: label-shifted answer cross-entropy, plain and chunked over the LM head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exo2ego_jax.train import losses


def _batch(b=3, t=11, d=16, v=37, seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(d, v)) * 0.5, jnp.float32)
    labels = rng.integers(0, v, size=(b, t)).astype(np.int32)
    labels[:, :4] = losses.IGNORE_INDEX  # prompt
    labels[1, 7:] = losses.IGNORE_INDEX  # right padding
    example_mask = jnp.asarray([1, 1, 0], jnp.int32)  # last row is epoch-end padding
    return hidden, kernel, jnp.asarray(labels), example_mask


def _reference(logits, labels, example_mask):
    """Loss from first principles in numpy: position t predicts labels[t + 1]."""
    logits, labels, ex = np.asarray(logits, np.float64), np.asarray(labels), np.asarray(example_mask)
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = labels[b, t + 1]
            if y == losses.IGNORE_INDEX or not ex[b]:
                continue
            row = logits[b, t]
            total += np.log(np.exp(row - row.max()).sum()) + row.max() - row[y]
            n += 1
    return total / n, n


def test_plain_loss_matches_reference():
    hidden, kernel, labels, ex = _batch()
    logits = hidden @ kernel
    loss, n = losses.answer_cross_entropy(logits, labels, ex)
    want, want_n = _reference(logits, labels, ex)
    assert float(n) == want_n
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [4, 7, 33, 1000])  # B*T = 33: ragged, ragged, one chunk, larger
def test_chunked_equals_plain_loss_and_gradient(chunk_size):
    hidden, kernel, labels, ex = _batch()

    def plain(h, k):
        return losses.answer_cross_entropy(jnp.einsum("btd,dv->btv", h, k), labels, ex)

    def chunked(h, k):
        return losses.chunked_answer_cross_entropy(h, k, labels, ex, chunk_size=chunk_size)

    (lp, np_), gp = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hidden, kernel)
    (lc, nc), gc = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(hidden, kernel)
    assert float(nc) == float(np_)
    np.testing.assert_allclose(float(lc), float(lp), rtol=1e-5, atol=1e-5)
    for a, b in zip(gc, gp):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # Tokens without a label (prompt, padding, the masked row, the last position) get no gradient.
    assert np.all(np.asarray(gc[0])[2] == 0) and np.all(np.asarray(gc[0])[:, -1] == 0)


def test_no_answer_tokens_gives_zero_loss_and_gradient():
    hidden, kernel, labels, _ = _batch()
    labels = jnp.full_like(labels, losses.IGNORE_INDEX)
    f = lambda h, k: losses.chunked_answer_cross_entropy(h, k, labels, chunk_size=8)[0]
    loss, (gh, gk) = jax.value_and_grad(f, argnums=(0, 1))(hidden, kernel)
    assert float(loss) == 0.0 and not np.any(np.asarray(gh)) and not np.any(np.asarray(gk))


def test_bad_shapes_are_named():
    hidden, kernel, labels, _ = _batch()
    with pytest.raises(ValueError, match="head_kernel must be"):
        losses.chunked_answer_cross_entropy(hidden, kernel.T, labels, chunk_size=8)
    with pytest.raises(ValueError, match="logits must be"):
        losses.answer_cross_entropy(hidden[:, :-1], labels)


def test_chunked_loss_never_materialises_the_logits():
    """Compiled loss + gradient with a Qwen2-size vocabulary: the [B, T, V] f32 buffer is gone."""
    b, t, d, v = 2, 32, 8, 152064  # Qwen2 / VideoLLaMA3 vocabulary
    hidden = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    kernel = jax.ShapeDtypeStruct((d, v), jnp.float32)
    labels = jax.ShapeDtypeStruct((b, t), jnp.int32)
    logits_bytes = b * t * v * 4

    def temp_bytes(loss):
        grad = jax.grad(lambda h, k, y: loss(h, k, y)[0], argnums=(0, 1))
        return jax.jit(grad).lower(hidden, kernel, labels).compile().memory_analysis().temp_size_in_bytes

    plain = temp_bytes(lambda h, k, y: losses.answer_cross_entropy(h @ k, y))
    chunked = temp_bytes(lambda h, k, y: losses.chunked_answer_cross_entropy(h, k, y, chunk_size=8))
    assert plain >= logits_bytes, (plain, logits_bytes)
    # One 8-token chunk of logits and its gradient (2 x 8 x V x 4 bytes), a quarter of the logits.
    assert chunked <= logits_bytes // 4 + 2**20, (chunked, logits_bytes)


def test_chunked_accuracy_and_nan_by_hand():
    """Hand-built head: row 0's target is the unique max (right), row 1's target ties the max
    (counted right: the top-1 test is 'target logit reaches the row max'), row 2's is below it."""
    # Positions 0..2 of one sequence; their targets are labels[1..3] = 1, 2, 0.
    hidden = jnp.asarray([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]], jnp.float32)
    # Columns are vocab entries: logits of a position = hidden @ kernel.
    kernel = jnp.asarray([[0.0, 2.0, 1.0], [0.0, 1.0, 1.0]], jnp.float32)
    labels = jnp.asarray([[-100, 1, 2, 0]], jnp.int32)
    # logits: p0 [0, 2, 1] target 1 = max; p1 [0, 1, 1] target 2 ties; p2 [0, 3, 2] target 0 below.
    loss, n, acc = losses.answer_loss_and_accuracy(hidden, labels, head_kernel=kernel, chunk_size=4)
    assert float(n) == 3
    np.testing.assert_allclose(float(acc), 2 / 3, rtol=1e-6)
    lse = lambda row: np.log(np.sum(np.exp(row)))
    expect = ((lse([0, 2, 1]) - 2) + (lse([0, 1, 1]) - 1) + (lse([0, 3, 2]) - 0)) / 3
    np.testing.assert_allclose(float(loss), expect, rtol=1e-6)
    # A NaN in the hidden states reaches the loss (the NaN guard then refuses the step).
    bad = hidden.at[0, 1, 0].set(jnp.nan)
    assert np.isnan(float(losses.answer_loss_and_accuracy(bad, labels, head_kernel=kernel, chunk_size=4)[0]))
