"""EAVT probes on the VideoLLaMA3 encoder: copied initialisation, masking of padded frames / slots, splicing."""

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from exo2ego_jax.models import videollama3 as vl3
from exo2ego_jax.models import videollama3_probes as vp3
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.weights.safetensors_io import param_paths

PATCH, VIDEO_ID, PROBE_ID = 2, 60, 61


@pytest.fixture(scope="module")
def setup():
    cfg = vl3.VideoLlama3Config(
        vision=vl3.VideoLlama3VisionConfig(hidden_size=16, intermediate_size=24, num_layers=3, num_heads=2,
                                           patch_size=PATCH),
        llm=LLMConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=8, attention_bias=True, model_type="qwen2"),
        image_token_id=59, video_token_id=VIDEO_ID)
    model = nnx.jit(lambda: vl3.VideoLlama3(cfg, rngs=nnx.Rngs(0)))()  # one compile instead of eager inits
    rng = np.random.default_rng(0)
    # sample 0: 2 frames of 2x4 patches; sample 1: 1 frame of 4x2 (+ 1 padding frame); 8 slots per frame
    patches = rng.normal(size=(2, 2, 8, 3 * PATCH * PATCH)).astype(np.float32)
    grid = np.array([[[2, 4], [2, 4]], [[4, 2], [0, 0]]], np.int32)
    videos = vl3.VisualInput(jnp.asarray(patches), jnp.asarray(grid))
    return cfg, model, videos


def test_init_copies_layer_attention_and_projector(setup):
    cfg, model, _ = setup
    eavt = _eavt(model, num_probes=4, probe_token_id=PROBE_ID)
    ours, src = param_paths(eavt), param_paths(model)
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        for w in ("kernel", "bias"):
            np.testing.assert_array_equal(ours[f"cross_attn/attn/{p}/{w}"].get_value(),
                                          src[f"vision/layers/attn/{p}/{w}"].get_value())
    for p in ("fc1", "fc2"):
        np.testing.assert_array_equal(ours[f"projector/{p}/kernel"].get_value(),
                                      src[f"projector/{p}/kernel"].get_value())
    assert ours["probes"].get_value().shape == (4, 16)
    with pytest.raises(ValueError, match="has 3 layers"):
        vp3.VideoLlama3EAVT(vp3.VideoLlama3EAVTConfig(layers=(3,)), model, rngs=nnx.Rngs(1))


def _eavt(model, **kw):
    cfg = vp3.VideoLlama3EAVTConfig(**kw)
    return nnx.jit(lambda m: vp3.VideoLlama3EAVT(cfg, m, rngs=nnx.Rngs(1)))(model)


@nnx.jit
def _encode(eavt, model, videos):
    return eavt.encode(model, videos)


def _np_attention(attn, probes, kv, heads):
    w = {p: (np.asarray(getattr(attn, p).kernel.get_value()), np.asarray(getattr(attn, p).bias.get_value()))
         for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    lin = lambda x, p: x @ w[p][0] + w[p][1]  # noqa: E731
    split = lambda x: x.reshape(x.shape[0], heads, -1).transpose(1, 0, 2)  # noqa: E731
    q, k, v = split(lin(probes, "q_proj")), split(lin(kv, "k_proj")), split(lin(kv, "v_proj"))
    s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    out = (a @ v).transpose(1, 0, 2).reshape(probes.shape[0], -1)
    return lin(out, "out_proj")


def test_probe_update_sees_only_real_patches_of_its_video(setup):
    cfg, model, videos = setup
    eavt = _eavt(model, num_probes=3, layers=(0,), probe_token_id=PROBE_ID)
    tokens, valid, probe_tokens = _encode(eavt, model, videos)
    ref_tokens, ref_valid = nnx.jit(lambda m, v: m.encode(v, cfg.video_merge_size))(model, videos)
    np.testing.assert_allclose(np.asarray(tokens), np.asarray(ref_tokens), atol=1e-6)  # the hook changes nothing else
    np.testing.assert_array_equal(np.asarray(valid), np.asarray(ref_valid))
    # Reference: layer-0 output gathered to the real slots (padding frame / slots dropped, not masked).
    h1 = np.asarray(nnx.jit(lambda m, v: m.vision(v.patches, v.grid_hw, merge_size=2, num_layers=1,
                                                  post_norm=False))(model, videos))
    grid = np.asarray(videos.grid_hw)
    attn0 = nnx.clone(eavt.cross_attn.attn)
    sliced = {p: getattr(attn0, p) for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    for lin in sliced.values():
        lin.kernel.set_value(lin.kernel.get_value()[0])
        lin.bias.set_value(lin.bias.get_value()[0])
    probes0 = np.asarray(eavt.probes.get_value())
    for b in range(2):
        kv = np.concatenate([h1[b, f, : grid[b, f, 0] * grid[b, f, 1]] for f in range(2)])
        want = _np_attention(attn0, probes0, kv, heads=2)
        fc1, fc2 = eavt.projector.fc1, eavt.projector.fc2
        hid = want @ np.asarray(fc1.kernel.get_value()) + np.asarray(fc1.bias.get_value())
        hid = 0.5 * hid * (1 + np.vectorize(math.erf)(hid / np.sqrt(2)))  # exact GELU
        got = hid @ np.asarray(fc2.kernel.get_value()) + np.asarray(fc2.bias.get_value())
        np.testing.assert_allclose(np.asarray(probe_tokens[b]), got, atol=1e-5)


def test_embed_inputs_places_probe_tokens(setup):
    cfg, model, videos = setup
    eavt = _eavt(model, num_probes=2, probe_token_id=PROBE_ID)
    n = [2 * 2, 2]  # merged tokens: 2 frames x (1x2) and 1 frame x (2x1)
    ids = np.zeros((2, 10), np.int32)
    for b in range(2):
        row = [5] + [VIDEO_ID] * n[b] + [PROBE_ID] * 2 + [7]
        ids[b, : len(row)] = row
    embeds = np.asarray(nnx.jit(lambda e, m, i, v: e.embed_inputs(m, i, v))(eavt, model, jnp.asarray(ids), videos))
    tokens, valid, probe_tokens = _encode(eavt, model, videos)
    for b in range(2):
        real = np.asarray(tokens[b])[np.asarray(valid[b])]
        np.testing.assert_allclose(embeds[b, 1:1 + n[b]], real, atol=1e-6)
        np.testing.assert_allclose(embeds[b, 1 + n[b]:3 + n[b]], np.asarray(probe_tokens[b]), atol=1e-6)


def test_remat_gives_the_same_gradients(setup):
    import dataclasses

    cfg, model, videos = setup

    def grads(remat):
        m = nnx.clone(model)
        m.vision.cfg = dataclasses.replace(m.vision.cfg, remat=remat)
        loss = lambda mm: jnp.sum(mm.encode(videos, 2)[0] ** 2)  # noqa: E731
        return nnx.jit(nnx.grad(loss))(m)

    g0, g1 = nnx.state(grads(False), nnx.Param), nnx.state(grads(True), nnx.Param)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert float(jnp.abs(g0["vision"]["layers"]["attn"]["q_proj"]["kernel"][...]).sum()) > 0
