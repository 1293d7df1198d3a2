"""train/optim.AdamW.apply_guarded: the optax chain's update in one pass per output, and its guard."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from exo2ego_jax.train import optim

LABELS = {"enc/w": 0, "enc/b": 0, "head/w": 1}


def make(clip=1.0, schedule="cosine", groups=(("^enc", 1e-2), ("^head", 3e-2), (".*", None))):
    tc = types.SimpleNamespace(groups=groups, warmup_steps=2, warmup_ratio=0.0, end_lr_ratio=0.1,
                               schedule=schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, clip=clip)
    return optim.make_optimizer(tc, LABELS, 12)[0]


def params0():
    rng = np.random.default_rng(0)
    return {"enc": {"w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
                    "b": jnp.asarray(rng.standard_normal(5), jnp.float32)},
            "head": {"w": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)}}


def grads_at(i, params):
    # Alternating large and small gradients: the clip is active on every other step.
    rng = np.random.default_rng(100 + i)
    size = 4.0 if i % 2 else 0.02
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * size, jnp.float32), params)


@pytest.mark.parametrize("clip,schedule", [(1.0, "cosine"), (0.0, "constant"), (1.0, "linear")])
def test_equals_optax_update_and_apply(clip, schedule):
    tx = make(clip, schedule)
    apply = jax.jit(tx.apply_guarded)
    ref_p = fused_p = params0()
    ref_s = fused_s = tx.init(ref_p)
    clipped = 0
    for i in range(8):
        g = grads_at(i, ref_p)
        norm = optax.global_norm(g)
        clipped += int(clip > 0 and norm >= clip)
        updates, ref_s = tx.update(g, ref_s, ref_p)
        ref_p = optax.apply_updates(ref_p, updates)
        fused_p, fused_s, ok = apply(g, fused_s, fused_p, norm, jnp.bool_(True))
        assert bool(ok)
        assert jax.tree.structure(fused_s) == jax.tree.structure(ref_s)
        for a, b in zip(jax.tree.leaves((ref_p, ref_s)), jax.tree.leaves((fused_p, fused_s))):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    assert clipped == (4 if clip else 0)


def test_refused_step_keeps_params_moments_and_counts():
    tx = make()
    p = params0()
    s = tx.init(p)
    g = grads_at(0, p)
    p1, s1, ok = tx.apply_guarded(g, s, p, optax.global_norm(g), jnp.bool_(True))
    assert bool(ok)
    p2, s2, ok = tx.apply_guarded(g, s1, p1, optax.global_norm(g), jnp.bool_(False))
    assert not bool(ok)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    # The Adam and schedule counts did not advance either: the next real step is step 2.
    counts = [leaf for leaf in jax.tree.leaves(s2) if leaf.dtype == jnp.int32]
    assert counts and all(int(c) == 1 for c in counts)


def test_non_finite_learning_rate_is_refused():
    """A NaN rate (e.g. a bad config) is caught from the scalar rate, not from the updates."""
    tx = make(groups=(("^enc", 1e-2), ("^head", float("nan")), (".*", None)))
    p = params0()
    s = tx.init(p)
    g = grads_at(0, p)
    p1, s1, ok = tx.apply_guarded(g, s, p, optax.global_norm(g), jnp.bool_(True))
    assert not bool(ok)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((p1, s1))):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_without_guard_a_non_finite_step_is_applied_and_reported():
    """finite=None (config.train.nan_guard=False): the update goes through whatever it holds."""
    tx = make(groups=(("^enc", 1e-2), ("^head", float("nan")), (".*", None)))
    p = params0()
    g = grads_at(0, p)
    p1, _, ok = tx.apply_guarded(g, tx.init(p), p, optax.global_norm(g), None)
    assert not bool(ok)
    assert np.isnan(np.asarray(p1["head"]["w"])).all() and np.isfinite(np.asarray(p1["enc"]["w"])).all()
