"""DecoderLM structure: full-size parameter counts (abstract), paths/axes, padding, remat, LoRA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.models import lora
from exo2ego_jax.models import rope as rope_lib
from exo2ego_jax.models.llm import DecoderLM, LLMConfig, rms_norm, swiglu
from exo2ego_jax.weights import llm_weights
from exo2ego_jax.weights import safetensors_io as sio

# Published HF configs (config.json on the Hub) and their parameter counts.
FULL = {
    "Mistral-7B-v0.1": (dict(model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                             rope_theta=10000.0, tie_word_embeddings=False), 7_241_732_096),
    "Qwen2.5-7B": (dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                        rope_theta=1e6, tie_word_embeddings=False), 7_615_616_512),
    "Qwen2.5-1.5B": (dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                          num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                          rope_theta=1e6, tie_word_embeddings=True), 1_543_714_304),
}


def hf_count(d):
    """Parameter count of a HF *ForCausalLM by formula (independent of our model code)."""
    h, i, v, n = d["hidden_size"], d["intermediate_size"], d["vocab_size"], d["num_hidden_layers"]
    hd = h // d["num_attention_heads"]
    q, kv = d["num_attention_heads"] * hd, d["num_key_value_heads"] * hd
    attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if d["model_type"] == "qwen2" else 0)
    layer = attn + 3 * h * i + 2 * h
    return v * h + n * layer + h + (0 if d["tie_word_embeddings"] else h * v)


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_param_counts(name):
    d, published = FULL[name]
    assert hf_count(d) == published
    cfg = LLMConfig.from_hf(d)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: DecoderLM(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    assert llm_weights.param_count(model) == published


CFG = LLMConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                num_kv_heads=2, head_dim=8)


@pytest.fixture(scope="module")
def model():
    with nnx.use_eager_sharding(False):
        return DecoderLM(CFG, rngs=nnx.Rngs(0), attention_impl="xla")


def test_every_param_has_logical_axes(model):
    for path, var in sio.param_paths(model).items():
        axes = sio.logical_axes(var)
        assert axes is not None and len(axes) == var.get_value().ndim, path
        if path.startswith("layers/"):
            assert axes[0] == "layers", path


def test_left_padding_and_remat_do_not_change_logits(model):
    ids = jnp.asarray([[3, 14, 15, 9, 26]])
    fwd = nnx.jit(lambda m, ids, mask: m(ids, attention_mask=mask)[0])
    ref = fwd(model, ids, jnp.ones_like(ids))
    padded = jnp.asarray([[0, 0, 3, 14, 15, 9, 26]])
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1, 1]])
    out = fwd(model, padded, mask)
    np.testing.assert_allclose(out[:, 2:], ref, atol=1e-5)
    state = nnx.state(model)
    with nnx.use_eager_sharding(False):
        remat = DecoderLM(CFG, rngs=nnx.Rngs(1), attention_impl="xla", remat_policy="full")
    nnx.update(remat, state)
    grad = nnx.jit(nnx.grad(lambda m: m(ids)[0].sum()))
    g1, g2 = grad(model), grad(remat)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g2)


@nnx.jit
def _fwd(m, ids, dropout_rng=None):
    return m(ids, dropout_rng=dropout_rng)[0]


def test_lora_paths_training_and_merge(model):
    m = nnx.clone(model)
    ids = jnp.asarray([[3, 14, 15, 9, 26]])
    base = _fwd(m, ids)
    adapted = lora.apply_lora(m, r"attn/(q_proj|v_proj)$", rank=4, alpha=8.0, rngs=nnx.Rngs(2))
    assert adapted == ["layers/attn/q_proj", "layers/attn/v_proj"]
    paths = sio.param_paths(m)
    assert "layers/attn/q_proj/kernel" in paths and paths["layers/attn/q_proj/lora_a"].get_value().shape == (2, 32, 4)
    assert sio.logical_axes(paths["layers/attn/v_proj/lora_b"]) == ("layers", "lora_rank", "kv_heads")
    np.testing.assert_allclose(_fwd(m, ids), base, atol=1e-6)  # lora_b = 0 at init
    # One SGD step on LoRA params only; base kernels untouched.
    is_lora = lambda path, v: isinstance(v, nnx.Param) and "lora_" in str(path[-1])  # noqa: E731
    diff = nnx.DiffState(0, is_lora)
    grads = nnx.jit(nnx.grad(lambda m: (m(ids)[0] ** 2).mean(), argnums=diff))(m)
    lora_params = nnx.state(m, is_lora)
    nnx.update(m, jax.tree.map(lambda p, g: p - 10.0 * g, lora_params, grads))
    tuned = _fwd(m, ids)
    assert not np.allclose(tuned, base, atol=1e-4)
    np.testing.assert_array_equal(sio.param_paths(m)["layers/attn/q_proj/kernel"].get_value(),
                                  sio.param_paths(model)["layers/attn/q_proj/kernel"].get_value())
    merged = lora.merged_copy(m)
    assert not any("lora" in p for p in sio.param_paths(merged))
    np.testing.assert_allclose(_fwd(merged, ids), tuned, atol=1e-5)
    # LoRA dropout: active only with dropout_rng.
    for _, lin in lora.lora_targets(m, "(q|v)_proj$"):
        lin.lora_dropout = 0.5
    np.testing.assert_allclose(_fwd(m, ids), tuned, atol=1e-6)
    assert not np.allclose(m(ids, dropout_rng=jax.random.key(0))[0], tuned, atol=1e-4)
    hf = llm_weights.to_hf_tensors(m)  # merges on export
    np.testing.assert_allclose(hf["model.layers.1.self_attn.q_proj.weight"],
                               np.asarray(sio.param_paths(merged)["layers/attn/q_proj/kernel"].get_value()[1]).T)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_swiglu_gradient_equals_autodiff_of_silu_gate(dtype):
    """The MLP gate's custom backward (recomputed sigmoid) = autodiff of silu(gate) * up."""
    r = np.random.RandomState(0)
    gate, up, cot = (jnp.asarray(3 * r.randn(6, 10).astype(np.float32)).astype(dtype) for _ in range(3))
    plain = lambda g, u: jnp.sum((jax.nn.silu(g) * u * cot).astype(jnp.float32))
    custom = lambda g, u: jnp.sum((swiglu(g, u) * cot).astype(jnp.float32))
    assert custom(gate, up) == plain(gate, up)  # the forward is the same expression
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    for got, want in zip(jax.grad(custom, (0, 1))(gate, up), jax.grad(plain, (0, 1))(gate, up)):
        assert got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_rms_norm_gradient_equals_autodiff_of_the_hf_expression(dtype):
    """The norm's custom backward (one reduction, one pass) = autodiff of HF's RMSNorm expression."""
    r = np.random.RandomState(1)
    x = jnp.asarray(2 * r.randn(2, 3, 16).astype(np.float32)).astype(dtype)
    cot = jnp.asarray(r.randn(2, 3, 16).astype(np.float32)).astype(dtype)
    scale = jnp.asarray(1 + 0.3 * r.randn(16).astype(np.float32))  # float32 master weights

    def hf(x, scale):  # LlamaRMSNorm: variance in float32, cast back before the weight multiply
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + 1e-5)
        return scale.astype(x.dtype) * xf.astype(x.dtype)

    plain = lambda x, s: jnp.sum((hf(x, s) * cot).astype(jnp.float32))
    custom = lambda x, s: jnp.sum((rms_norm(x, s, 1e-5) * cot).astype(jnp.float32))
    assert custom(x, scale) == plain(x, scale)  # the forward is the same expression
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    for got, want in zip(jax.grad(custom, (0, 1))(x, scale), jax.grad(plain, (0, 1))(x, scale)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol)


def test_rope_tables_read_by_position_equal_the_direct_ones():
    """The bounded path (a [P, D] table read by position) gives the direct path's values exactly,
    attention scaling (YaRN's) included; positions as DecoderLM makes them for left padding."""
    inv, scaling = rope_lib.inv_frequencies(8, 10000.0, {"rope_type": "yarn", "factor": 4.0}, 64)
    assert scaling != 1.0
    mask = jnp.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)  # [[0, 0, 0, 1, 2, 3], [0, ..., 5]]
    direct = rope_lib.rope_tables(positions, inv, scaling)
    table = rope_lib.rope_tables(positions, inv, scaling, num_positions=6)
    for got, want in zip(table, direct):
        assert got.shape == (2, 6, 8)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_allclose(np.asarray(direct[0][1, 5, :4]), scaling * np.cos(5 * inv), rtol=1e-6)


def test_train_step_computes_rope_tables_once(model):
    """XLA:CPU fuses a cos/sin into every consumer it feeds; read from a position table, the decoder's
    RoPE tables are computed once per step (one cosine, one sine in the whole compiled loss and
    gradient), not per head, layer and pass (the direct expression compiled to 4 of each per layer here)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.asarray(np.random.RandomState(0).randint(0, CFG.vocab_size, (2, 16)))

    def loss(p):
        logits, _ = nnx.merge(graphdef, p, rest)(input_ids=ids)
        return jnp.mean(logits ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    assert (hlo.count(" cosine("), hlo.count(" sine(")) == (1, 1)
