"""Parity of our CLIP / SigLIP towers with transformers' PyTorch models on tiny random checkpoints."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from exo2ego_jax.data.preprocess_config import PreprocessConfig  # noqa: E402
from exo2ego_jax.models.vit import VisionConfig, VisionTower  # noqa: E402
from exo2ego_jax.weights import vision_weights as vw  # noqa: E402
from exo2ego_jax.weights.safetensors_io import open_checkpoint, param_paths, save_safetensors  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            image_size=28, patch_size=7)


def _hf_dir(tmp_path_factory, kind):
    torch.manual_seed(0)
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY))
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY))
    # Random LayerNorm affine params so the norms are actually tested (HF inits them to 1 / 0).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp(kind)
    model.save_pretrained(d)
    return model.eval(), str(d)


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tower(request, tmp_path_factory):
    model, d = _hf_dir(tmp_path_factory, request.param)
    cfg = VisionConfig.from_hf(d)
    with nnx.use_eager_sharding(False):
        ours = VisionTower(cfg, rngs=nnx.Rngs(0))
    vw.load_vision_tower(ours, d)
    return request.param, model, ours, d


def _pixels(cfg, lead=(2,), seed=0):
    return np.random.default_rng(seed).normal(size=(*lead, cfg.image_size, cfg.image_size, 3)).astype(np.float32)


def test_config_from_hf(tower):
    kind, model, ours, d = tower
    cfg = ours.cfg
    assert (cfg.model_type, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.patch_size) == (kind, 64, 3, 4, 7)
    assert cfg.hidden_act == ("quick_gelu" if kind == "clip" else "gelu_pytorch_tanh")
    assert cfg.layer_norm_eps == (1e-5 if kind == "clip" else 1e-6)
    assert cfg.num_patches == 16 and cfg.feature_num_layers == 2  # feature_layer=-2 of 4 hidden states


def test_parity_with_transformers(tower):
    kind, model, ours, _ = tower
    x = _pixels(ours.cfg)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True)
    hs = [h.numpy() for h in ref.hidden_states]
    # Every layer output, and the last layer as HF returns it (SigLIP applies post-LN there).
    for k in range(ours.cfg.num_layers + 1):
        np.testing.assert_allclose(ours(jnp.asarray(x), num_layers=k), hs[k], atol=1e-4, rtol=0)
    last = ours(jnp.asarray(x), post_norm=(kind == "siglip"))
    np.testing.assert_allclose(last, ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    # The selected feature layer (hidden_states[-2]); CLIP drops the class token.
    feats = ours.features(jnp.asarray(x))
    want = hs[-2][:, 1:] if kind == "clip" else hs[-2]
    assert feats.shape == (2, 16, 64)
    np.testing.assert_allclose(feats, want, atol=1e-4, rtol=0)


def test_frames_folded_into_batch(tower):
    _, _, ours, _ = tower
    x = jnp.asarray(_pixels(ours.cfg, lead=(2, 3)))
    out = ours.features(x)
    assert out.shape == (2, 3, 16, 64)
    np.testing.assert_allclose(out[1, 2], ours.features(x[1, 2:3])[0], atol=1e-5)


def test_param_paths_and_logical_axes(tower):
    _, _, ours, _ = tower
    params = param_paths(ours)
    q = params["layers/attn/q_proj/kernel"]
    assert q.get_value().shape == (3, 64, 64)
    assert q.get_metadata()["out_sharding"] == ("layers", "vit_embed", "vit_heads")
    assert params["layers/mlp/fc1/kernel"].get_metadata()["out_sharding"] == ("layers", "vit_embed", "vit_mlp")
    hf_count = sum(p.numel() for p in tower[1].parameters())
    # SigLIP's HF model includes the MAP head, which we do not build.
    head = sum(p.numel() for n, p in tower[1].named_parameters() if n.split(".")[0] == "head" or ".head." in n)
    assert sum(v.get_value().size for v in params.values()) == hf_count - head


def test_export_roundtrip(tower, tmp_path):
    _, _, ours, d = tower
    exported = vw.export_vision_tower(ours)
    src = open_checkpoint(d)
    pre = vw.detect_vision_prefix(src)
    keys = {k for k in src.keys() if not k.startswith(pre + "head.") and not k.endswith("position_ids")}
    assert {pre + k[len("vision_model."):] for k in exported} == keys
    for k in keys:
        np.testing.assert_array_equal(exported["vision_model." + k[len(pre):]], src.get(k))
    # Saved export loads back identically.
    save_safetensors(exported, str(tmp_path))
    with nnx.use_eager_sharding(False):
        again = VisionTower(ours.cfg, rngs=nnx.Rngs(1))
    vw.load_vision_tower(again, str(tmp_path))
    for p, v in param_paths(again).items():
        np.testing.assert_array_equal(v.get_value(), param_paths(ours)[p].get_value())


def test_bad_checkpoint_lists_all_problems(tower, tmp_path):
    _, _, ours, _ = tower
    t = vw.export_vision_tower(ours)
    del t["vision_model.post_layernorm.weight"]
    for i in range(3):
        t[f"vision_model.encoder.layers.{i}.mlp.fc1.weight"] = np.zeros((5, 64), np.float32)
    t["vision_model.encoder.layers.0.extra"] = np.zeros((2,), np.float32)
    save_safetensors(t, str(tmp_path))
    with pytest.raises(ValueError) as err:
        vw.load_vision_tower(ours, str(tmp_path))
    msg = str(err.value)
    assert "post_layernorm.weight" in msg and "layers/mlp/fc1/kernel" in msg and "layers.0.extra" in msg


def test_bad_pixels_name_the_shape(tower):
    _, _, ours, _ = tower
    with pytest.raises(ValueError, match="expected \\(28, 28, 3\\)"):
        ours(jnp.zeros((1, 32, 32, 3)))


def test_bfloat16_compute_close():
    cfg = VisionConfig(model_type="siglip", hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                       image_size=14, patch_size=7, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
    with nnx.use_eager_sharding(False):
        f32 = VisionTower(cfg, rngs=nnx.Rngs(0))
        bf16 = VisionTower(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jnp.asarray(_pixels(cfg))
    a, b = f32(x), bf16(x)
    assert b.dtype == jnp.bfloat16
    assert float(jnp.max(jnp.abs(a - b.astype(jnp.float32)))) < 0.1 * float(jnp.max(jnp.abs(a)))


def test_preprocess_config_from_hf_processors():
    clip = PreprocessConfig.from_hf(transformers.CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).to_dict())
    assert clip.output_size == (336, 336) and clip.resample == "bicubic"
    np.testing.assert_allclose(clip.image_mean, [0.48145466, 0.4578275, 0.40821073])
    sig = PreprocessConfig.from_hf(transformers.SiglipImageProcessor(size={"height": 384, "width": 384}).to_dict())
    assert sig.output_size == (384, 384) and sig.image_mean == (0.5, 0.5, 0.5) and sig.image_std == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="size"):
        PreprocessConfig.from_hf({"size": {"longest": 3}})


def test_lazy_sharded_load(tower):
    """An abstract tower is filled straight into its target sharding (4-way fsdp x 2-way tensor)."""
    _, _, ours, d = tower
    mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: VisionTower(ours.cfg, rngs=nnx.Rngs(0)))
    vw.load_vision_tower(abstract, d, mesh=mesh)  # project rules (parallel/rules.py)
    q = abstract.layers.attn.q_proj.kernel.value
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    np.testing.assert_array_equal(q, ours.layers.attn.q_proj.kernel.value)
    x = jnp.asarray(_pixels(ours.cfg))
    np.testing.assert_allclose(abstract.features(x), ours.features(x), atol=1e-5)
