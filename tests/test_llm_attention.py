"""Attention dispatch: the fused-kernel call path (jax.nn.dot_product_attention) equals the XLA path."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.models import attention, splash
from exo2ego_jax.models.llm import DecoderLM, LLMConfig

CFG = LLMConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8)


def test_fallback_logs_on_cpu(caplog):
    attention.resolve_impl.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert attention.resolve_impl("cudnn") == "xla"
    assert "needs a GPU" in caplog.text
    assert attention.resolve_impl("auto") == "xla"


@pytest.mark.parametrize("window", [None, 3])
def test_dot_product_path_matches_xla_right_padded(window):
    """With a sliding window the fused call takes it as local_window_size; XLA as a mask."""
    cfg = dataclasses.replace(CFG, sliding_window=window)
    with nnx.use_eager_sharding(False):
        xla = DecoderLM(cfg, rngs=nnx.Rngs(0), attention_impl="xla")
        fused = DecoderLM(cfg, rngs=nnx.Rngs(1), attention_impl="dot_product")
    nnx.update(fused, nnx.state(xla, nnx.Param))
    ids = jnp.asarray([[3, 14, 15, 9, 26, 5], [7, 1, 8, 0, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])  # right padding, as in training
    fwd = nnx.jit(lambda m: m(ids, attention_mask=mask)[0])
    a, b = fwd(xla), fwd(fused)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], atol=1e-5)
    g = nnx.jit(nnx.grad(lambda m: (m(ids, attention_mask=mask)[0] * mask[..., None]).sum()))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4), g(xla), g(fused))


def test_splash_sliding_window_equals_windowed_xla_mask():
    """The splash kernel's local mask (interpret mode on CPU) keeps the query and window - 1 keys."""
    b, t, h, k, d, window = 2, 128, 4, 2, 32, 40
    r = np.random.RandomState(0)
    q, kk, v = (jnp.asarray(r.randn(b, t, n, d).astype(np.float32)) for n in (h, k, k))
    lengths = jnp.asarray([t, 77], jnp.int32)
    i = jnp.arange(t)
    mask = ((i[None, :, None] >= i[None, None, :]) & (i[None, :, None] - i[None, None, :] < window)
            & (i[None, None, :] < lengths[:, None, None]))
    want = attention.xla_attention(q, kk, v, mask, d ** -0.5)
    got = splash.splash_attention(q, kk, v, lengths, d ** -0.5, interpret=True, window=window)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), atol=2e-5)
    np.testing.assert_allclose(np.asarray(got[1, :77]), np.asarray(want[1, :77]), atol=2e-5)


def test_xla_and_cached_attention_equal_naive_grouped_attention():
    """Head-major grouped layouts (xla_attention, cached_attention) = per-head softmax(q k^T) v in numpy."""
    b, t, h, kv, d = 2, 5, 6, 2, 4
    r = np.random.RandomState(0)
    q, k, v = (r.randn(b, t, n, d).astype(np.float32) for n in (h, kv, kv))
    i = np.arange(t)
    mask = (i[None, :, None] >= i[None, None, :]) & (np.asarray([t, 3])[:, None, None] > i[None, None, :])
    mask[1, 3:, 0] = True  # rows past the length attend to slot 0 only, as DecoderLM's pad rows do
    want = np.zeros((b, t, h, d), np.float32)
    for bi in range(b):
        for hi in range(h):
            s = q[bi, :, hi] @ k[bi, :, hi // (h // kv)].T / np.sqrt(d)
            s = np.where(mask[bi], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            want[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, hi // (h // kv)]
    got = attention.xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), d ** -0.5)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    cached = attention.cached_attention(jnp.asarray(q), jnp.asarray(k.transpose(0, 2, 3, 1)),
                                        jnp.asarray(v.transpose(0, 2, 1, 3)), jnp.asarray(mask), d ** -0.5)
    np.testing.assert_allclose(np.asarray(cached), want, atol=1e-5)


@pytest.mark.parametrize("block", [2, 4, 3])
def test_causal_key_block_skipping_equals_full_attention(block):
    """causal_xla_attention (query block i reads keys of blocks <= i) = xla_attention on a causal,
    right-padded mask, values and gradients; block 3 does not divide T = 8: the full path runs."""
    b, t, h, kv, d = 2, 8, 4, 2, 4
    r = np.random.RandomState(1)
    q, k, v = (jnp.asarray(r.randn(b, t, n, d).astype(np.float32)) for n in (h, kv, kv))
    i = np.arange(t)
    mask = (i[None, :, None] >= i[None, None, :]) & (np.asarray([t, 5])[:, None, None] > i[None, None, :])
    mask[1, 5:, 0] = True  # DecoderLM's pad rows attend to slot 0 only
    mask = jnp.asarray(mask)
    cot = jnp.asarray(r.randn(b, t, h, d).astype(np.float32))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, mask, d ** -0.5) * cot)

    full = jax.value_and_grad(lambda *a: loss(attention.xla_attention, *a), argnums=(0, 1, 2))(q, k, v)
    blocked = jax.value_and_grad(
        lambda *a: loss(lambda *x: attention.causal_xla_attention(*x, block=block), *a), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(blocked[0], full[0], rtol=1e-5)
    for g_blocked, g_full in zip(blocked[1], full[1]):
        np.testing.assert_allclose(np.asarray(g_blocked), np.asarray(g_full), atol=1e-5)
    out = attention.causal_xla_attention(q, k, v, mask, d ** -0.5, block=block)
    np.testing.assert_allclose(np.asarray(out), np.asarray(attention.xla_attention(q, k, v, mask, d ** -0.5)),
                               atol=1e-6)


def test_decoder_with_causal_key_blocks_equals_full_attention(monkeypatch):
    """DecoderLM's training path (no cache) runs the block-skipping attention: same logits."""
    with nnx.use_eager_sharding(False):
        model = DecoderLM(CFG, rngs=nnx.Rngs(0), attention_impl="xla")
    ids = jnp.asarray([[3, 14, 15, 9, 26, 5, 35, 8], [7, 1, 8, 2, 8, 0, 0, 0]])
    mask = jnp.asarray([[1] * 8, [1] * 5 + [0] * 3])
    logits = {}
    for block in (0, 2):
        monkeypatch.setattr(attention, "CAUSAL_BLOCK", block)
        logits[block] = np.asarray(nnx.jit(lambda m: m(ids, attention_mask=mask)[0])(model))
    np.testing.assert_allclose(logits[2], logits[0], atol=1e-5)


def test_masked_softmax_gradient_equals_autodiff_of_the_masked_softmax():
    """The custom backward (probabilities only) = autodiff of softmax(where(mask, s, min))."""
    r = np.random.RandomState(2)
    scores = jnp.asarray(r.randn(2, 3, 5, 7).astype(np.float32))
    mask = jnp.asarray(r.rand(2, 1, 5, 7) > 0.4).at[..., 0].set(True)  # every row sees a key
    cot = jnp.asarray(r.randn(2, 3, 5, 7).astype(np.float32))
    plain = lambda s: jnp.sum(jax.nn.softmax(jnp.where(mask, s, jnp.finfo(jnp.float32).min), -1) * cot)
    custom = lambda s: jnp.sum(attention.masked_softmax(s, mask) * cot)
    np.testing.assert_allclose(custom(scores), plain(scores), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(custom)(scores)), np.asarray(jax.grad(plain)(scores)),
                               atol=1e-6)
