"""F / G mapping networks: shapes (incl. odd sizes), layout, the FC ablation, sharding metadata."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.models.mapping import FCMapping, MappingConfig, ResNetGenerator, build_mapping

TINY = MappingConfig(width=4, n_downsample=1, n_blocks=2, norm="instance")
apply = nnx.jit(lambda m, x: m(x))  # one compile per shape instead of op-by-op dispatch


@pytest.fixture(scope="module")
def gen():
    with nnx.use_eager_sharding(False):  # init under jit: one compile, not one per op
        return nnx.jit(lambda: build_mapping(8, TINY, rngs=nnx.Rngs(0)))()


@pytest.mark.parametrize("hw", [(12, 12), (5, 7), (3, 3)])
def test_resnet_generator_keeps_shape(gen, hw):
    x = jax.random.normal(jax.random.key(1), (2, *hw, 8))
    y = apply(gen, x)
    assert y.shape == x.shape
    assert np.isfinite(np.asarray(y)).all()


def test_resnet_layout_matches_paper_defaults():
    with nnx.use_eager_sharding(False):  # shapes only: no parameter memory, no compute
        g = nnx.eval_shape(lambda: ResNetGenerator(16, MappingConfig(width=8), rngs=nnx.Rngs(0)))
    assert len(g.blocks) == 9  # Exo2Ego paper: 9 residual blocks
    assert len(g.down) == 2 and len(g.up) == 2
    assert g.blocks[0].a.conv.kernel.shape == (3, 3, 32, 32)  # width doubles per downsampling
    assert g.stem.conv.kernel.shape == (7, 7, 16, 8)
    assert g.head.kernel.shape == (7, 7, 8, 16)


def test_global_residual_is_identity_plus_net():
    cfg = MappingConfig(width=4, n_downsample=1, n_blocks=1, global_residual=True)
    with nnx.use_eager_sharding(False):
        g = build_mapping(8, cfg, rngs=nnx.Rngs(0))
    g.head.kernel[...] = jnp.zeros_like(g.head.kernel[...])
    x = jax.random.normal(jax.random.key(2), (1, 4, 4, 8))
    np.testing.assert_allclose(apply(g, x), x, atol=1e-6)


def test_fc_variant_acts_per_vector():
    with nnx.use_eager_sharding(False):
        f = build_mapping(8, MappingConfig(kind="fc", fc_hidden=16), rngs=nnx.Rngs(0))
    assert isinstance(f, FCMapping)
    x = jax.random.normal(jax.random.key(3), (2, 3, 3, 8))
    y = apply(f, x)
    assert y.shape == x.shape
    # Fully connected per feature vector: position (1, 1) depends only on x at (1, 1).
    x2 = x.at[:, 0, 0].set(0.0)
    np.testing.assert_allclose(apply(f, x2)[:, 1, 1], y[:, 1, 1], atol=1e-6)


def test_params_carry_logical_axes(gen):
    leaves = jax.tree.leaves(nnx.state(gen, nnx.Param), is_leaf=lambda v: isinstance(v, nnx.Variable))
    for v in leaves:
        meta = v.get_metadata()
        axes = meta.get("sharding", meta.get("out_sharding", meta.get("sharding_names")))
        assert axes is not None and len(axes) == v[...].ndim


def test_bad_config_names_key():
    with pytest.raises(ValueError, match="norm"):
        MappingConfig.from_config({"norm": "batch"})
    with pytest.raises(ValueError, match="unknown keys"):
        MappingConfig.from_config({"widht": 3})


def test_one_by_one_bottleneck_with_instance_norm_is_refused():
    with nnx.use_eager_sharding(False):
        g = build_mapping(8, MappingConfig(width=4, n_downsample=1, n_blocks=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="1x1"):
        g(jnp.ones((1, 2, 2, 8)))


def _conv_reference(g: ResNetGenerator, x):
    """The generator computed with padded convolutions only (the CycleGAN formulation)."""
    from exo2ego_jax.models.mapping import _reflect

    def cna(m, h):
        y = m.conv(_reflect(h, m.pad)) if m.pad else m.conv(h)
        y = m.norm(y) if m.norm is not None else y
        return jax.nn.relu(y) if m.act else y
    h = cna(g.stem, x)
    for b in g.blocks:
        h = h + cna(b.b, cna(b.a, h))
    y = g.head(_reflect(h, g.cfg.stem_kernel // 2))
    return x + y if g.cfg.global_residual else y


@pytest.mark.parametrize("hw,k", [((2, 2), 3), ((2, 2), 7), ((3, 2), 3), ((1, 3), 5), ((4, 4), 3)])
def test_padded_conv_equals_convolution(hw, k):
    """The matmul form of small padded convs (demo: 2x2 maps) is the convolution, to float rounding."""
    from exo2ego_jax.models.mapping import _reflect, padded_conv
    conv = nnx.Conv(6, 5, (k, k), padding="VALID", rngs=nnx.Rngs(3))
    conv.bias[...] = jax.random.normal(jax.random.key(4), (5,))
    x = jax.random.normal(jax.random.key(5), (3, *hw, 6))
    want = conv(_reflect(x, k // 2))
    np.testing.assert_allclose(padded_conv(conv, x), want, atol=1e-5, rtol=1e-5)
    # ... and so is its gradient w.r.t. the kernel, the bias and the input.
    grad = lambda f: nnx.grad(lambda m, x: jnp.sum(jnp.sin(f(m, x))), argnums=(0, 1))(conv, x)  # noqa: E731
    (gm, gx), (rm, rx) = grad(padded_conv), grad(lambda m, x: m(_reflect(x, k // 2)))
    np.testing.assert_allclose(gx, rx, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(gm["kernel"][...], rm["kernel"][...], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(gm["bias"][...], rm["bias"][...], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(2, 2), (3, 2)])
def test_generator_on_small_maps_equals_conv_formulation(hw):
    """The demo's F/G (no downsampling, 7x7 stem on 2x2 maps): the same function as the conv form.

    Without norms the float32 outputs agree within 1e-5. Instance norm over 4 positions divides by
    a tiny spread (edge padding makes the positions alike) and amplifies float32 rounding to
    ~1e-4, so with it the two forms are compared in float64, where they agree to 1e-9."""
    x = jax.random.normal(jax.random.key(7), (4, *hw, 16))
    cfg = MappingConfig(width=8, n_downsample=0, n_blocks=2, norm="none", global_residual=True)
    with nnx.use_eager_sharding(False):
        g = build_mapping(16, cfg, rngs=nnx.Rngs(6))
    np.testing.assert_allclose(apply(g, x), nnx.jit(_conv_reference)(g, x), atol=1e-5, rtol=1e-5)
    with jax.enable_x64(True):
        cfg = MappingConfig(width=8, n_downsample=0, n_blocks=2, norm="instance", global_residual=True)
        with nnx.use_eager_sharding(False):
            g = build_mapping(16, cfg, rngs=nnx.Rngs(6), dtype=jnp.float64, param_dtype=jnp.float64)
        x64 = x.astype(jnp.float64)
        np.testing.assert_allclose(g(x64), _conv_reference(g, x64), atol=1e-9, rtol=1e-9)
