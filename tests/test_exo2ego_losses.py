"""Exo2Ego losses against values computed by hand on tiny inputs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exo2ego_jax.methods.exo2ego.losses import cycle_loss, feature_kl, l1

L3 = math.log(3.0)
Y = jnp.array([[0.0, L3]])  # softmax = [1/4, 3/4]
FX = jnp.array([[0.0, 0.0]])  # softmax = [1/2, 1/2]


def test_kl_default_direction_by_hand():
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(p_y || p_F) = 0.130812
    np.testing.assert_allclose(feature_kl(Y, FX), want, rtol=1e-6)


def test_kl_reverse_direction_by_hand():
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(p_F || p_y) = 0.143841
    np.testing.assert_allclose(feature_kl(Y, FX, direction="mapped_to_exo"), want, rtol=1e-6)


def test_kl_temperature_by_hand():
    s3 = math.sqrt(3.0)
    p = [1 / (1 + s3), s3 / (1 + s3)]  # softmax([0, ln3] / 2)
    want = sum(pi * math.log(pi / 0.5) for pi in p)  # 0.036353
    np.testing.assert_allclose(feature_kl(Y, FX, temperature=2.0), want, rtol=1e-6)


def test_kl_mask_and_mean_over_tokens():
    y = jnp.concatenate([Y, FX, Y])  # per-token KL: 0.130812, 0, 0.130812
    fx = jnp.concatenate([FX, FX, FX])
    kl1 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    np.testing.assert_allclose(feature_kl(y, fx), 2 * kl1 / 3, rtol=1e-6)
    np.testing.assert_allclose(feature_kl(y, fx, mask=jnp.array([1, 1, 0])), kl1 / 2, rtol=1e-6)


def test_kl_stops_gradient_into_exo():
    gy, gf = jax.grad(lambda y, f: feature_kl(y, f), argnums=(0, 1))(Y, FX)
    np.testing.assert_array_equal(gy, 0.0)
    # d/dz KL(p || softmax(z)) = softmax(z) - p = [1/2 - 1/4, 1/2 - 3/4]
    np.testing.assert_allclose(gf, [[0.25, -0.25]], rtol=1e-6)


def test_kl_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"\(1, 2\).*\(1, 3\)"):
        feature_kl(Y, jnp.zeros((1, 3)))


def test_cycle_both_directions_by_hand():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    gfx = jnp.array([[1.0, 0.0], [3.0, 5.0]])  # |diff| = 0 2 0 1 -> 0.75
    y = jnp.array([[0.0, 0.0], [0.0, 0.0]])
    fgy = jnp.array([[1.0, -1.0], [2.0, 0.0]])  # |diff| = 1 1 2 0 -> 1.0
    total, parts = cycle_loss(x, gfx, y, fgy)
    np.testing.assert_allclose(parts["cycle_fwd"], 0.75)
    np.testing.assert_allclose(parts["cycle_bwd"], 1.0)
    np.testing.assert_allclose(total, 1.75)
    fwd_only, parts = cycle_loss(x, gfx, forward_only=True)
    np.testing.assert_allclose(fwd_only, 0.75)
    assert "cycle_bwd" not in parts
    np.testing.assert_allclose(l1(gfx, x, mask=jnp.array([1, 0])), 1.0)  # only row 0: (0 + 2) / 2
