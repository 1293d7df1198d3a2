"""The Pallas TPU splash path (run in interpret mode on CPU) equals the XLA path, with a mesh too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exo2ego_jax.models import attention, splash

B, T, H, K, D = 2, 128, 4, 2, 64  # one 128-token block per row: the smallest shape the kernel takes


def _inputs():
    r = np.random.RandomState(0)
    q, k, v = (jnp.asarray(r.randn(B, T, n, D).astype(np.float32)) for n in (H, K, K))
    lengths = jnp.asarray([T, 77], jnp.int32)  # second row right-padded
    return q, k, v, lengths


def _reference(q, k, v, lengths):
    i = jnp.arange(T)
    mask = (i[None, :, None] >= i[None, None, :]) & (i[None, None, :] < lengths[:, None, None])
    return attention.xla_attention(q, k, v, mask, D ** -0.5)


def _real(x, lengths):  # padded query rows differ by design (they attend to padding only)
    return np.concatenate([np.asarray(x[0]), np.asarray(x[1, : int(lengths[1])])])


def test_splash_equals_xla_on_real_tokens():
    q, k, v, lengths = _inputs()
    got = splash.splash_attention(q, k, v, lengths, D ** -0.5, interpret=True)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(_real(got, lengths), _real(_reference(q, k, v, lengths), lengths), atol=2e-5)


def test_splash_under_a_mesh_shards_batch_and_heads():
    q, k, v, lengths = _inputs()
    auto = (jax.sharding.AxisType.Auto,) * 3  # as parallel/mesh.py builds it
    mesh = jax.make_mesh((1, 2, 2), ("data", "fsdp", "tensor"), axis_types=auto, devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        got = jax.jit(lambda *a: splash.splash_attention(*a, D ** -0.5, interpret=True))(q, k, v, lengths)
    np.testing.assert_allclose(_real(got, lengths), _real(_reference(q, k, v, lengths), lengths), atol=2e-5)


def test_splash_rejects_lengths_off_the_block():
    q, k, v, lengths = _inputs()
    with pytest.raises(ValueError, match="multiple of 128"):
        splash.splash_attention(q[:, :100], k[:, :100], v[:, :100], lengths, 1.0, interpret=True)


def test_decoder_with_splash_matches_xla(monkeypatch):
    """The model-level switch: a decoder built with attention_impl='splash' (forced on CPU)."""
    from flax import nnx

    from exo2ego_jax.models.llm import DecoderLM, LLMConfig

    cfg = LLMConfig(vocab_size=50, hidden_size=64, intermediate_size=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=64)
    with nnx.use_eager_sharding(False):
        ref = DecoderLM(cfg, rngs=nnx.Rngs(0), attention_impl="xla")
        fused = DecoderLM(cfg, rngs=nnx.Rngs(0), attention_impl="splash")
    monkeypatch.setattr(attention, "resolve_impl", lambda impl: impl)  # use the kernel on CPU
    calls = []
    kernel = splash.splash_attention
    monkeypatch.setattr(splash, "splash_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    ids = jnp.asarray(np.random.RandomState(1).randint(0, 50, (2, T)))
    mask = jnp.asarray((np.arange(T)[None] < np.asarray([[T], [90]])).astype(np.int32))
    want, got = ref(ids, attention_mask=mask)[0], fused(ids, attention_mask=mask)[0]
    np.testing.assert_allclose(np.asarray(got[1, :90]), np.asarray(want[1, :90]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), atol=1e-4)
    assert calls  # the layers really went through the kernel


def test_splash_gradients_equal_xla():
    q, k, v, lengths = _inputs()
    w = jnp.asarray(np.random.RandomState(2).randn(B, T, H, D).astype(np.float32))
    w = w * (jnp.arange(T)[None, :, None, None] < lengths[:, None, None, None])  # real queries only

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    got = jax.grad(loss(lambda q, k, v: splash.splash_attention(q, k, v, lengths, D ** -0.5, interpret=True)),
                   argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(lambda q, k, v: _reference(q, k, v, lengths)), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
        np.testing.assert_allclose(_real(g, lengths), _real(r, lengths), atol=1e-4)
