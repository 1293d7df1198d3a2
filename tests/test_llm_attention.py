"""Attention dispatch: the fused-kernel call path (jax.nn.dot_product_attention) equals the XLA path."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from exo2ego_jax.models import attention
from exo2ego_jax.models.llm import DecoderLM, LLMConfig

CFG = LLMConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8)


def test_fallback_logs_on_cpu(caplog):
    attention.resolve_impl.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert attention.resolve_impl("cudnn") == "xla"
    assert "needs a GPU" in caplog.text
    assert attention.resolve_impl("auto") == "xla"


def test_dot_product_path_matches_xla_right_padded():
    with nnx.use_eager_sharding(False):
        xla = DecoderLM(CFG, rngs=nnx.Rngs(0), attention_impl="xla")
        fused = DecoderLM(CFG, rngs=nnx.Rngs(1), attention_impl="dot_product")
    nnx.update(fused, nnx.state(xla, nnx.Param))
    ids = jnp.asarray([[3, 14, 15, 9, 26, 5], [7, 1, 8, 0, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])  # right padding, as in training
    fwd = nnx.jit(lambda m: m(ids, attention_mask=mask)[0])
    a, b = fwd(xla), fwd(fused)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], atol=1e-5)
    g = nnx.jit(nnx.grad(lambda m: (m(ids, attention_mask=mask)[0] * mask[..., None]).sum()))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4), g(xla), g(fused))
