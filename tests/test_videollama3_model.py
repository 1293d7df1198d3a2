"""VideoLLaMA3 in JAX vs transformers' VideoLlama3ForConditionalGeneration on a tiny random checkpoint.

Frames of several sizes and clips of several lengths share one batch (padded per-frame buckets);
vision features, projector outputs and final logits must agree within 1e-4 in float32.
"""

import functools
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from exo2ego_jax.generate import generate  # noqa: E402
from exo2ego_jax.models import videollama3 as vl3  # noqa: E402
from exo2ego_jax.weights import safetensors_io as sio  # noqa: E402
from exo2ego_jax.weights import videollama3_weights as vw  # noqa: E402

IMAGE_ID, VIDEO_ID, VOCAB = 120, 121, 128
PATCH = 4
# (frames, h, w) in patches per video; sample 0 has 3 frames of 4x6, sample 1 has 2 frames of 6x2.
VIDEOS = [(3, 4, 6), (2, 6, 2)]
IMAGES = [(1, 3, 5), (1, 2, 2)]  # one image per sample, merge size 1
TOL = 1e-4


def tiny_hf_config():
    return transformers.VideoLlama3Config(
        text_config=dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=256, rope_parameters=dict(rope_type="default", rope_theta=10000.0),
                         tie_word_embeddings=False, eos_token_id=2, bos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=PATCH, num_channels=3),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)


def _randomise_norms(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.VideoLlama3ForConditionalGeneration(tiny_hf_config()).eval()
    _randomise_norms(model)
    d = tmp_path_factory.mktemp("vl3")
    model.save_pretrained(d)
    return model, str(d)


@pytest.fixture(scope="module")
def ours(hf_dir):
    return vw.load_videollama3_dir(hf_dir[1])


def _frames(specs, seed):
    """Per sample: patches [t*h*w, C*p*p] block-major (random, as the processor would write) + grid."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(t * h * w, 3 * PATCH * PATCH)).astype(np.float32), (t, h, w)) for t, h, w in specs]


def _bucket(samples, num_frames, num_patches):
    """Our padded bucket for per-sample clips."""
    patches, grids = [], []
    for p, (t, h, w) in samples:
        frames = [(p[i * h * w:(i + 1) * h * w], (h, w)) for i in range(t)]
        a, g = vl3.pad_frames(frames, num_frames, num_patches)
        patches.append(a)
        grids.append(g)
    return vl3.VisualInput(jnp.asarray(np.stack(patches)), jnp.asarray(np.stack(grids)))


def _hf_visual(samples, merge):
    pv = torch.from_numpy(np.concatenate([p for p, _ in samples]))
    thw = torch.tensor([g for _, g in samples])
    return pv, thw, torch.full((len(samples),), merge)


@pytest.fixture(scope="module")
def batch():
    videos = _frames(VIDEOS, 1)
    images = _frames(IMAGES, 2)
    n_vid = [t * h * w // 4 for t, h, w in VIDEOS]
    n_img = [t * h * w for t, h, w in IMAGES]
    rng = np.random.default_rng(3)
    rows = []
    for b in range(2):
        text = lambda n: list(rng.integers(3, 100, size=n))  # noqa: E731
        rows.append(text(3) + [IMAGE_ID] * n_img[b] + text(2) + [VIDEO_ID] * n_vid[b] + text(4))
    t = max(map(len, rows))
    ids = np.zeros((2, t), np.int64)
    mask = np.zeros((2, t), np.int64)
    for b, r in enumerate(rows):  # left padding, as in generation
        ids[b, t - len(r):] = r
        mask[b, t - len(r):] = 1
    return dict(videos=videos, images=images, ids=ids, mask=mask)


def test_config_from_hf(ours):
    cfg = ours.cfg
    assert (cfg.vision.hidden_size, cfg.vision.num_layers, cfg.vision.num_heads, cfg.vision.patch_size) == (32, 2, 2, 4)
    assert cfg.vision.rope_theta == 10000.0 and cfg.vision.hidden_act == "gelu_pytorch_tanh"
    assert (cfg.llm.model_type, cfg.llm.num_kv_heads, cfg.llm.attention_bias) == ("qwen2", 2, True)
    assert (cfg.image_token_id, cfg.video_token_id) == (IMAGE_ID, VIDEO_ID)


def test_merge_weights_match_torch_bilinear():
    for m in (1, 2, 3, 4):
        x = torch.randn(1, 5, 2 * m, 3 * m)
        ref = torch.nn.functional.interpolate(x, size=(2, 3), mode="bilinear").numpy()
        blocks = x.numpy().reshape(1, 5, 2, m, 3, m).transpose(0, 1, 2, 4, 3, 5).reshape(1, 5, 2, 3, m * m)
        np.testing.assert_allclose(blocks @ vl3.merge_weights(m), ref, atol=1e-6)


@functools.partial(nnx.jit, static_argnums=2)
def _encode_and_project(model, visual, merge):
    hidden = model.vision(visual.patches, visual.grid_hw, merge_size=merge)
    merged, valid = vl3.merge_frames(hidden, visual.grid_hw, merge)
    return merged, valid, model.projector(merged)


@pytest.mark.parametrize("attention_impl", ["xla", "dot_product"])
def test_vision_and_projector_parity(hf_dir, ours, batch, attention_impl):
    """Several frame sizes and clip lengths in one bucket; both attention paths."""
    hf, _ = hf_dir
    for samples, merge, frames, slots in ((batch["videos"], 2, 3, 24), (batch["images"], 1, 1, 16)):
        pv, thw, ms = _hf_visual(samples, merge)
        with torch.no_grad():
            ref_vis = hf.model.vision_model(pixel_values=pv, grid_thw=thw, merge_sizes=ms).last_hidden_state
            ref_proj = hf.model.projector(ref_vis).numpy()
        ref_vis = ref_vis.numpy()
        vis_in = _bucket(samples, frames, slots)
        encoder = ours.vision
        encoder.layers.attn.impl = attention_impl  # the switch is read at trace time
        merged, valid, proj = _encode_and_project(ours, vis_in, merge)
        got_vis = np.asarray(merged)[np.asarray(valid)]
        got_proj = np.asarray(proj)[np.asarray(valid)]
        assert got_vis.shape == ref_vis.shape
        np.testing.assert_allclose(got_vis, ref_vis, atol=TOL, rtol=0)
        np.testing.assert_allclose(got_proj, ref_proj, atol=TOL, rtol=0)
        print(f"merge={merge} impl={attention_impl}: vision max|diff| {np.abs(got_vis - ref_vis).max():.2e}, "
              f"projector {np.abs(got_proj - ref_proj).max():.2e}")
    encoder.layers.attn.impl = encoder.cfg.attention_impl


def _hf_logits(hf, batch, **extra):
    ids, mask = torch.from_numpy(batch["ids"]), torch.from_numpy(batch["mask"])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    pv, thw, ms = _hf_visual(batch["videos"], 2)
    ipv, ithw, ims = _hf_visual(batch["images"], 1)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values_videos=pv, video_grid_thw=thw,
                  video_merge_sizes=ms, pixel_values=ipv, image_grid_thw=ithw, image_merge_sizes=ims,
                  **extra).logits.numpy()


def _our_logits(model, batch):
    vids, imgs = _bucket(batch["videos"], 3, 24), _bucket(batch["images"], 1, 16)
    vl3.check_visual_placeholders(batch["ids"], VIDEO_ID, np.asarray(vids.grid_hw), 2)
    vl3.check_visual_placeholders(batch["ids"], IMAGE_ID, np.asarray(imgs.grid_hw), 1, what="image")
    fn = nnx.jit(lambda m, ids, mask, v, i: m(ids, mask, videos=v, images=i))
    return np.asarray(fn(model, jnp.asarray(batch["ids"]), jnp.asarray(batch["mask"]), vids, imgs))


def test_logits_parity(hf_dir, ours, batch):
    ref = _hf_logits(hf_dir[0], batch)
    got = _our_logits(ours, batch)
    real = batch["mask"].astype(bool)
    diff = np.abs(got - ref)[real].max()
    print(f"logits max|diff| {diff:.2e}")
    assert diff <= TOL


def test_placeholder_count_error(batch):
    ids = batch["ids"].copy()
    ids[1, -1] = VIDEO_ID
    grid = np.array([[[4, 6]] * 3, [[6, 2], [6, 2], [0, 0]]])
    with pytest.raises(ValueError, match="sample 1: 7 video placeholder tokens"):
        vl3.check_visual_placeholders(ids, VIDEO_ID, grid, 2)


def _release_dir(hf_dir, tmp_path):
    """The same weights under DAMO-NLP-SG's release key names and config."""
    hf, d = hf_dir
    reader = sio.open_checkpoint(d)
    ren = {"model.vision_model.": "model.vision_encoder.", "model.projector.": "model.mm_projector.",
           "model.language_model.": "model."}
    tensors = {}
    for k in reader.keys():
        new = next((v + k[len(p):] for p, v in ren.items() if k.startswith(p)), k)
        tensors[new] = reader.get(k)
    sio.save_safetensors(tensors, str(tmp_path), max_shard_bytes=40_000)  # sharded: tests the index too
    c = hf.config
    cfg = dict(c.text_config.to_dict(), model_type="videollama3_qwen2", architectures=["Videollama3Qwen2ForCausalLM"],
               mm_projector_type="mlp2x_gelu", image_token_index=IMAGE_ID, use_token_compression=True,
               vision_encoder_config=dict(c.vision_config.to_dict(), model_type="videollama3_vision_encoder"))
    with open(tmp_path / "config.json", "w") as fh:
        json.dump(cfg, fh)
    return str(tmp_path)


def test_release_layout_and_export_roundtrip(hf_dir, ours, tmp_path):
    rel = _release_dir(hf_dir, tmp_path / "release")
    assert os.path.exists(os.path.join(rel, "model.safetensors.index.json"))
    model = vw.load_videollama3_dir(rel)
    assert model.cfg.video_token_id == model.cfg.image_token_id == IMAGE_ID
    for (p, a), (q, b) in zip(sorted(sio.param_paths(model).items()), sorted(sio.param_paths(ours).items())):
        assert p == q
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))
    # Export to the transformers layout: transformers loads it and every tensor is identical.
    out = tmp_path / "export"
    vw.save_hf(ours, str(out), max_shard_bytes=40_000)
    back = transformers.VideoLlama3ForConditionalGeneration.from_pretrained(out)
    ref = hf_dir[0].state_dict()
    assert set(back.state_dict()) == set(ref)
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), ref[k].numpy(), err_msg=k)


def test_load_errors_name_keys(hf_dir, ours, tmp_path):
    reader = sio.open_checkpoint(hf_dir[1])
    tensors = {k: reader.get(k) for k in reader.keys()}
    del tensors["model.vision_model.encoder.layers.1.mlp.fc2.bias"]
    tensors["model.projector.readout.0.weight"] = tensors["model.projector.readout.0.weight"][:, :-1]
    tensors["model.extra.weight"] = np.zeros(3, np.float32)
    sio.save_safetensors(tensors, str(tmp_path))
    with pytest.raises(ValueError) as e:
        vw.load_videollama3(ours, str(tmp_path))
    msg = str(e.value)
    assert "model.vision_model.encoder.layers.1.mlp.fc2.bias" in msg
    assert "projector/fc1/kernel: expected (32, 32)" in msg
    assert "model.extra.weight" in msg and "transformers key layout" in msg


def test_greedy_generation_matches_transformers(hf_dir, ours, batch):
    """KV-cache greedy decoding of 16 tokens, batch of 2 left-padded prompts with clips of 3 and 2 frames."""
    hf = hf_dir[0]
    ids, mask = torch.from_numpy(batch["ids"]), torch.from_numpy(batch["mask"])
    pv, thw, ms = _hf_visual(batch["videos"], 2)
    ipv, ithw, ims = _hf_visual(batch["images"], 1)
    # EOS = 2 on both sides: row 0 emits it after 13 tokens (then pads), row 1 runs all 16.
    gen_cfg = transformers.GenerationConfig(max_new_tokens=16, do_sample=False, eos_token_id=2, pad_token_id=0)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pv, video_grid_thw=thw,
                          video_merge_sizes=ms, pixel_values=ipv, image_grid_thw=ithw, image_merge_sizes=ims,
                          generation_config=gen_cfg)
    ref = ref[:, ids.shape[1]:].numpy()
    vids, imgs = _bucket(batch["videos"], 3, 24), _bucket(batch["images"], 1, 16)
    embed = nnx.jit(lambda m, i, v, im: m.embed_inputs(i, videos=v, images=im))
    embeds = embed(ours, jnp.asarray(batch["ids"]), vids, imgs)
    out = generate(ours.llm, inputs_embeds=embeds, attention_mask=batch["mask"], max_new_tokens=16,
                   eos_token_id=2, pad_token_id=0)
    print("generated", out.tokens.tolist())
    assert ref.shape == (2, 16) and out.lengths.tolist() == [14, 16]
    np.testing.assert_array_equal(out.tokens, ref)


def test_sharded_load_and_forward_under_mesh(hf_dir, batch):
    """Lazy load into an (fsdp=2, tensor=4) mesh over the 8 fake devices; the forward under the mesh
    (activation constraints active) still matches transformers."""
    mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model = vw.load_videollama3_dir(hf_dir[1], mesh=mesh)
    params = sio.param_paths(model)
    P = jax.sharding.PartitionSpec
    assert params["vision/layers/attn/q_proj/kernel"].get_value().sharding.spec == P(None, "fsdp", "tensor")
    assert params["vision/layers/mlp/fc1/kernel"].get_value().sharding.spec == P(None, "fsdp", "tensor")
    assert params["llm/embed/embedding"].get_value().sharding.spec == P("tensor", "fsdp")
    with jax.set_mesh(mesh):
        got = _our_logits(model, batch)
    ref = _hf_logits(hf_dir[0], batch)
    real = batch["mask"].astype(bool)
    assert np.abs(got - ref)[real].max() <= TOL


def test_lora_student_exports_merged(ours, batch, tmp_path):
    """LoRA on the decoder (the student's adapters): HF export folds them in; reloading gives the same logits."""
    from exo2ego_jax.models import lora

    student = nnx.clone(ours)
    paths = lora.apply_lora(student.llm, rank=4, rngs=nnx.Rngs(3))
    assert paths and all(p.startswith("layers/") for p in paths)
    for _, lin in lora.lora_targets(student.llm, ".*"):
        if lin.lora_b is not None:
            lin.lora_b.set_value(0.05 * jax.random.normal(jax.random.key(1), lin.lora_b.get_value().shape))
    want = _our_logits(student, batch)
    assert np.abs(want - _our_logits(ours, batch)).max() > 1e-3  # the adapters change the output
    vw.save_hf(student, str(tmp_path))
    got = _our_logits(vw.load_videollama3_dir(str(tmp_path)), batch)
    np.testing.assert_allclose(got, want, atol=1e-4)
