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
