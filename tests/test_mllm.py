"""VideoLLM: placeholder splicing, several videos per sample, end-to-end forward, full checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.models.connectors import ConnectorConfig
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.models.mllm import (VideoLLM, VideoLLMConfig, check_placeholders, num_visual_tokens,
                                     scatter_tokens)
from exo2ego_jax.models.vit import VisionConfig
from exo2ego_jax.weights import vision_weights as vw
from exo2ego_jax.weights.safetensors_io import param_paths, save_safetensors

VIT = VisionConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, image_size=20, patch_size=5)
LLM = LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=8)
CFG = VideoLLMConfig(vision=VIT, connector=ConnectorConfig(kind="stc", in_dim=16, out_dim=32, stc_depth=1),
                     llm=LLM, num_frames=4, video_token_id=63)
N = 8  # 4 frames of 4x4 patches -> STC -> 2x2x2
B, V, T = 2, 2, 24


@pytest.fixture(scope="module")
def model():
    with nnx.use_eager_sharding(False):
        return VideoLLM(CFG, rngs=nnx.Rngs(0))


def _batch(seed=0):
    """Sample 0: one real video (second is padding); sample 1: two videos, text between them."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 60, size=(B, T)).astype(np.int32)
    ids[0, 3:3 + N] = 63
    ids[1, 2:2 + N] = 63
    ids[1, 12:12 + N] = 63
    mask = np.ones((B, T), np.int32)
    mask[0, 20:] = 0
    video_mask = np.array([[1, 0], [1, 1]], np.int32)
    pixels = rng.normal(size=(B, V, 4, 20, 20, 3)).astype(np.float32)
    return ids, mask, video_mask, pixels


def test_num_visual_tokens():
    assert num_visual_tokens(CFG) == N
    assert num_visual_tokens(VideoLLMConfig()) == 1152  # VideoLLaMA2-7B-16F: CLIP-L/14-336 + STC


def test_visual_tokens_land_at_placeholders(model):
    ids, _, video_mask, _ = _batch()
    vis = jax.random.normal(jax.random.key(1), (B, V, N, 32))
    emb = model.embed_inputs(jnp.asarray(ids), vis, jnp.asarray(video_mask))
    text = model.llm.embed(jnp.asarray(np.where(ids == 63, 0, ids)))
    np.testing.assert_array_equal(emb[0, 3:3 + N], vis[0, 0])
    np.testing.assert_array_equal(emb[1, 2:2 + N], vis[1, 0])
    np.testing.assert_array_equal(emb[1, 12:12 + N], vis[1, 1])
    other = ids != 63
    np.testing.assert_array_equal(np.asarray(emb)[other], np.asarray(text)[other])


def test_masked_video_is_skipped():
    ids = np.full((1, 12), 5, np.int32)
    ids[0, 2:2 + 4] = 7
    vis = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(1, 2, 4, 3)
    out = scatter_tokens(jnp.zeros((1, 12, 3)), jnp.asarray(ids), 7, vis, jnp.asarray([[0, 1]]))
    np.testing.assert_array_equal(out[0, 2:6], vis[0, 1])  # video 0 is padding: video 1 fills the slots
    assert float(jnp.abs(out[0, 6:]).sum()) == 0.0


def test_check_placeholders_names_the_sample():
    ids, _, video_mask, _ = _batch()
    check_placeholders(ids, video_mask, N, 63)
    ids[1, 13] = 5
    with pytest.raises(ValueError, match="sample 1 .* 15 placeholder tokens .* 2 real videos"):
        check_placeholders(ids, video_mask, N, 63)


def test_end_to_end_forward(model):
    ids, mask, video_mask, pixels = _batch()
    fwd = nnx.jit(lambda m, *a: m(*a))
    logits = fwd(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask), jnp.asarray(video_mask))
    assert logits.shape == (B, T, 64) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # Same as running the three steps by hand.
    vis = model.encode_video(jnp.asarray(pixels))
    assert vis.shape == (B, V, N, 32)
    want, _ = model.llm(inputs_embeds=model.embed_inputs(jnp.asarray(ids), vis, jnp.asarray(video_mask)),
                        attention_mask=jnp.asarray(mask))
    np.testing.assert_allclose(logits, want, atol=1e-5)
    # The padding video of sample 0 has no influence; a real video of sample 1 does.
    p2 = pixels.copy()
    p2[0, 1] += 1.0
    p2[1, 1] += 1.0
    logits2 = fwd(model, jnp.asarray(ids), jnp.asarray(p2), jnp.asarray(mask), jnp.asarray(video_mask))
    np.testing.assert_allclose(logits2[0], logits[0], atol=1e-6)
    assert float(jnp.abs(logits2[1, 12:] - logits[1, 12:]).max()) > 1e-4
    np.testing.assert_allclose(logits2[1, :12], logits[1, :12], atol=1e-5)  # causal: before video 2


def test_full_checkpoint_roundtrip_and_errors(model, tmp_path):
    tensors = vw.export_videollm(model)
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.weight" in tensors
    assert "model.mm_projector.s1.b1.conv1.conv.weight" in tensors and "lm_head.weight" in tensors
    assert "model.layers.0.self_attn.q_proj.weight" in tensors
    save_safetensors(tensors, str(tmp_path / "full"))
    with nnx.use_eager_sharding(False):
        fresh = nnx.eval_shape(lambda: VideoLLM(CFG, rngs=nnx.Rngs(1)))
    vw.load_videollm(fresh, str(tmp_path / "full"))
    ours = param_paths(model)
    for p, v in param_paths(fresh).items():
        np.testing.assert_array_equal(v.get_value(), ours[p].get_value(), err_msg=p)
    # Tower from a separate CLIP checkpoint (VideoLLaMA2 releases do not store it).
    vis = {k: v for k, v in tensors.items() if k.startswith("model.vision_tower.")}
    rest = {k: v for k, v in tensors.items() if k not in vis}
    save_safetensors({"vision_model." + k[len(vw.LLAVA_VISION_PREFIX):]: v for k, v in vis.items()},
                     str(tmp_path / "clip"))
    save_safetensors(rest, str(tmp_path / "rest"))
    vw.load_videollm(fresh, str(tmp_path / "rest"), vision_checkpoint=str(tmp_path / "clip"))
    # Problems in every part are listed in one error.
    del rest["model.mm_projector.readout.2.bias"]
    rest["model.layers.0.mlp.up_proj.weight"] = np.zeros((3, 32), np.float32)
    rest["model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 32), np.float32)
    rest["model.stray.weight"] = np.zeros((2,), np.float32)
    save_safetensors(rest, str(tmp_path / "bad"))
    with pytest.raises(ValueError) as err:
        vw.load_videollm(fresh, str(tmp_path / "bad"), vision_checkpoint=str(tmp_path / "clip"))
    msg = str(err.value)
    assert "readout/fc/1/bias" in msg and "layers/mlp/up_proj/kernel" in msg and "model.stray.weight" in msg


def test_from_videollama2_config():
    hf = {"model_type": "videollama2_mistral", "vocab_size": 32000, "hidden_size": 4096,
          "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 8, "rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 32768,
          "mm_projector_type": "stc_connector_v35", "mm_hidden_size": 1024, "mm_vision_select_layer": -2,
          "mm_vision_select_feature": "patch", "num_frames": 16}
    cfg = VideoLLMConfig.from_videollama2(hf, VisionConfig())
    assert cfg.connector.kind == "stc" and cfg.connector.stc_padding == 0 and cfg.llm.num_kv_heads == 8
    assert num_visual_tokens(cfg) == 1152
    with pytest.raises(ValueError, match="mm_projector_type"):
        VideoLLMConfig.from_videollama2({**hf, "mm_projector_type": "qformer"}, VisionConfig())
    with pytest.raises(ValueError, match="tower width"):
        dataclasses.replace(CFG, connector=ConnectorConfig(kind="stc", in_dim=8, out_dim=32))


def test_uint8_pixels_are_normalised_on_device_like_float_input(model):
    """The pipeline's uint8 batches give the same visual tokens as host-normalised float32 frames."""
    from exo2ego_jax.data.preprocess_config import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from exo2ego_jax.data.video import resize_crop_normalise

    frames = np.random.default_rng(3).integers(0, 256, (B, V, 4, 20, 20, 3), dtype=np.uint8)
    normalised = resize_crop_normalise(frames.reshape(-1, 20, 20, 3), 20, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    encode = nnx.jit(lambda m, p: m.encode_video(p))
    from_uint8 = encode(model, jnp.asarray(frames))
    from_float = encode(model, jnp.asarray(normalised.reshape(frames.shape)))
    np.testing.assert_allclose(from_uint8, from_float, atol=2e-5)
    with pytest.raises(ValueError, match="must be uint8"):
        model.encode_video(jnp.asarray(frames, jnp.int32))


def test_pixel_mean_std_come_from_the_tower_config(tmp_path):
    from exo2ego_jax.data.preprocess_config import OPENAI_CLIP_MEAN, PreprocessConfig
    from exo2ego_jax.models.vit import normalise_pixels

    assert VIT.pixel_mean == OPENAI_CLIP_MEAN  # CLIP family default
    siglip = VisionConfig(model_type="siglip", hidden_size=16, num_heads=2, image_size=20, patch_size=5)
    assert siglip.pixel_mean == siglip.pixel_std == (0.5, 0.5, 0.5)
    own = VIT.with_preprocess(PreprocessConfig(resize=20, crop=(20, 20), image_mean=(0.1, 0.2, 0.3),
                                               image_std=(0.5, 0.5, 0.25)))
    assert own.pixel_mean == (0.1, 0.2, 0.3) and hash(own)
    x = normalise_pixels(jnp.asarray([[0, 255, 51]], jnp.uint8), own.pixel_mean, own.pixel_std)
    np.testing.assert_allclose(x, [[-0.2, 1.6, -0.4]], atol=1e-6)
    with pytest.raises(ValueError, match="gives 24x24 frames"):
        VIT.with_preprocess(PreprocessConfig(resize=24, crop=(24, 24)))
    # from_hf picks up the preprocessor_config.json of an HF model dir.
    (tmp_path / "config.json").write_text('{"model_type": "siglip_vision_model", "image_size": 20, '
                                          '"patch_size": 5, "hidden_size": 16, "num_attention_heads": 2}')
    assert VisionConfig.from_hf(tmp_path).pixel_mean == (0.5, 0.5, 0.5)
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"height": 20, "width": 20}, '
                                                       '"image_mean": [0.4, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2]}')
    assert VisionConfig.from_hf(tmp_path).pixel_std == (0.2, 0.2, 0.2)
