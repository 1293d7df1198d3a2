"""Ego2ExoVLM EAVT probes: initialisation from the ViT, per-layer updates, per-video attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.models.connectors import ConnectorConfig
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.models.mllm import VideoLLM, VideoLLMConfig, num_visual_tokens
from exo2ego_jax.models.probes import EAVT, EAVTConfig
from exo2ego_jax.models.vit import VisionConfig

VIT = VisionConfig(model_type="siglip", hidden_size=16, intermediate_size=32, num_layers=3, num_heads=2,
                   image_size=20, patch_size=5, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
LLM = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                head_dim=8)
CFG = VideoLLMConfig(vision=VIT, connector=ConnectorConfig(kind="merge_mlp2x_gelu", in_dim=16, out_dim=32),
                     llm=LLM, num_frames=2, video_token_id=63)
P = 4


@pytest.fixture(scope="module")
def setup():
    with nnx.use_eager_sharding(False):
        model = VideoLLM(CFG, rngs=nnx.Rngs(0))
        eavt = EAVT(EAVTConfig(num_probes=P, probe_token_id=62), model, rngs=nnx.Rngs(1))
    return model, eavt


def _pixels(seed=0, b=2, v=2):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, v, 2, 20, 20, 3)).astype(np.float32))


def test_modules_start_as_vit_attention_copies(setup):
    model, eavt = setup
    n = VIT.feature_num_layers
    assert eavt.num_layers == n == 2
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        for w in ("kernel", "bias"):
            ours = getattr(eavt.cross_attn.attn, name)
            src = getattr(model.vision.layers.attn, name)
            np.testing.assert_array_equal(getattr(ours, w).value, getattr(src, w).value[:n])
    for i, fc in enumerate(eavt.projector.fc):
        np.testing.assert_array_equal(fc.kernel.value, model.connector.readout.fc[i].kernel.value)
    probes = eavt.probes.value
    assert isinstance(eavt.probes, nnx.Param) and probes.shape == (P, 16)
    assert eavt.probes.get_metadata()["out_sharding"] == ("probes", "vit_embed")
    assert 0.005 < float(jnp.std(probes)) < 0.05
    # The copies are independent arrays: updating the probes' modules leaves the tower alone.
    assert eavt.cross_attn.attn.q_proj.kernel.value is not model.vision.layers.attn.q_proj.kernel.value


def _manual(model, eavt, pixels, layers):
    """Reference: hidden states layer by layer from the tower, cross-attention applied by hand."""
    b, v = pixels.shape[:2]
    probes = jnp.broadcast_to(eavt.probes.value, (b, v, P, 16))
    gdef, state = nnx.split(eavt.cross_attn.attn)
    for i in range(eavt.num_layers):
        x = model.vision(pixels, num_layers=i + 1)  # [B, V, F, T, D]
        if i in layers:
            attn = nnx.merge(gdef, jax.tree.map(lambda a: a[i], state))
            probes = attn(probes, x.reshape(b, v, -1, 16))
    return probes


def test_hooked_tower_matches_layer_by_layer_reference(setup):
    model, eavt = setup
    pixels = _pixels()
    p0 = jnp.broadcast_to(eavt.probes.value, (2, 2, P, 16))
    feats, probes = model.encode_features(pixels, layer_hook=eavt.cross_attn, hook_carry=p0)
    np.testing.assert_allclose(feats, model.encode_features(pixels), atol=1e-6)  # tower output unchanged
    np.testing.assert_allclose(probes, _manual(model, eavt, pixels, {0, 1}), atol=1e-5)
    # Only layer 0 selected: layer 1 leaves the probes as they are.
    with nnx.use_eager_sharding(False):
        only0 = EAVT(EAVTConfig(num_probes=P, layers=(0,)), model, rngs=nnx.Rngs(1))
    _, probes0 = model.encode_features(pixels, layer_hook=only0.cross_attn, hook_carry=p0)
    np.testing.assert_allclose(probes0, _manual(model, only0, pixels, {0}), atol=1e-5)
    with pytest.raises(ValueError, match="runs 2 layers"):
        EAVT(EAVTConfig(layers=(2,)), model, rngs=nnx.Rngs(1))


def test_probes_attend_only_within_their_video(setup):
    model, eavt = setup
    pixels = _pixels()
    vis, probe_tokens = eavt.encode(model, pixels)
    assert vis.shape == (2, 2, num_visual_tokens(CFG), 32) and probe_tokens.shape == (2, 2, P, 32)
    changed = pixels.at[1, 0].add(1.0)
    _, probe_tokens2 = eavt.encode(model, changed)
    diff = jnp.abs(probe_tokens2 - probe_tokens).max(axis=(2, 3))
    assert float(diff[1, 0]) > 1e-4
    np.testing.assert_array_equal(np.asarray(diff).ravel()[[0, 1, 3]], 0.0)


def test_probe_tokens_follow_visual_tokens_and_probes_get_gradients(setup):
    model, eavt = setup
    n = num_visual_tokens(CFG)
    ids = np.full((1, n + P + 4), 5, np.int32)
    ids[0, 1:1 + n] = 63
    ids[0, 1 + n:1 + n + P] = 62
    pixels = _pixels(b=1, v=1)
    vm = jnp.ones((1, 1), jnp.int32)
    emb = eavt.embed_inputs(model, jnp.asarray(ids), pixels, vm)
    vis, probe_tokens = eavt.encode(model, pixels)
    np.testing.assert_allclose(emb[0, 1:1 + n], vis[0, 0], atol=1e-6)
    np.testing.assert_allclose(emb[0, 1 + n:1 + n + P], probe_tokens[0, 0], atol=1e-6)

    def loss(e):
        out = e.embed_inputs(model, jnp.asarray(ids), pixels, vm)
        return jnp.sum(out[0, 1 + n:1 + n + P] ** 2)

    grads = nnx.grad(loss)(eavt)
    assert float(jnp.abs(grads.probes.value).max()) > 0
    assert float(jnp.abs(grads.cross_attn.attn.q_proj.kernel.value).max()) > 0
