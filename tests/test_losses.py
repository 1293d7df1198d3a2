"""The shared answer-only cross-entropy (train/losses.py), by hand."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from exo2ego_jax.data import text as text_lib
from exo2ego_jax.train import losses

L3 = math.log(3.0)


def test_ignore_index_is_the_data_layers():
    assert losses.IGNORE_INDEX == text_lib.IGNORE_INDEX == -100


def test_answer_tokens_only_by_hand():
    # Position t predicts token t+1: labels[0, 1] is predicted by logits[0, 0].
    logits = jnp.zeros((2, 3, 2)).at[0, 0].set(jnp.array([0.0, L3])).at[1, 1].set(jnp.array([L3, 0.0]))
    labels = jnp.array([[-100, 1, -100], [-100, -100, 1]])
    loss, n = losses.answer_cross_entropy(logits, labels)
    want = (-math.log(0.75) - math.log(0.25)) / 2
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(n) == 2.0
    loss, n = losses.answer_cross_entropy(logits, labels, example_mask=jnp.array([1, 0]))
    np.testing.assert_allclose(loss, -math.log(0.75), rtol=1e-6)
    assert float(n) == 1.0
    loss, n = losses.answer_cross_entropy(logits, jnp.full((2, 3), -100))
    assert float(loss) == 0.0 and float(n) == 0.0


def test_label_at_position_zero_is_never_a_target():
    # Nothing predicts token 0; the last position predicts nothing.
    logits = jnp.zeros((1, 2, 3))
    loss, n = losses.answer_cross_entropy(logits, jnp.array([[2, -100]]))
    assert float(n) == 0.0 and float(loss) == 0.0
    loss, n = losses.answer_cross_entropy(logits, jnp.array([[-100, 2]]))
    assert float(n) == 1.0
    np.testing.assert_allclose(loss, math.log(3.0), rtol=1e-6)


def test_token_accuracy_and_gradient():
    logits = jnp.zeros((1, 3, 2)).at[0, 0].set(jnp.array([0.0, L3])).at[0, 1].set(jnp.array([0.0, L3]))
    labels = jnp.array([[-100, 1, 0]])  # position 0 right (argmax 1), position 1 wrong (argmax 1 != 0)
    assert float(losses.token_accuracy(logits, labels)) == 0.5
    # d loss / d logits = (softmax - onehot) / n at the two answer positions, zero elsewhere.
    g = jax.grad(lambda z: losses.answer_cross_entropy(z, labels)[0])(logits)
    np.testing.assert_allclose(g[0, 0], (np.array([0.25, 0.75]) - [0, 1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(g[0, 1], (np.array([0.25, 0.75]) - [1, 0]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(g[0, 2], [0.0, 0.0])


def test_label_log_likelihood_sums_the_shifted_label_log_probs():
    # Row 0: positions 0 and 1 predict labels 1 and 0 (position 2's prediction has no next token);
    # row 1 scores only its last label. Expectations by hand from log-softmax of two logits.
    logits = jnp.array([[[0.0, 1.0], [2.0, 0.0], [5.0, 5.0]],
                        [[1.0, 1.0], [0.0, 3.0], [0.0, 0.0]]], jnp.float32)
    labels = jnp.array([[-100, 1, 0], [-100, -100, 1]], jnp.int32)
    def log_sm(a, b, i):
        return [a, b][i] - np.log(np.exp(a) + np.exp(b))
    want = [log_sm(0.0, 1.0, 1) + log_sm(2.0, 0.0, 0), log_sm(0.0, 3.0, 1)]
    got = losses.label_log_likelihood(logits, labels)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
