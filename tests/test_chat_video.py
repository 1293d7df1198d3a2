"""Video chat end to end: a tiny random VideoLLaMA2-style checkpoint dir, a real mp4, chat.run.

The reference is computed here without the chat job's code paths: our own frame decoding and
preprocessing, our own prompt rendering / placeholder expansion, the in-memory model the checkpoint
was exported from, and a greedy loop of full VideoLLM forwards (no KV cache) + argmax.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import chat as chat_config  # noqa: E402
from exo2ego_jax import chat  # noqa: E402
from exo2ego_jax.synthetic import tokenizer as stok  # noqa: E402
from exo2ego_jax.data import video as video_lib  # noqa: E402
from exo2ego_jax.models.mllm import VideoLLM, VideoLLMConfig  # noqa: E402
from exo2ego_jax.models.vit import VisionConfig  # noqa: E402
from exo2ego_jax.weights import vision_weights as vw  # noqa: E402
from exo2ego_jax.weights.safetensors_io import param_paths, save_safetensors  # noqa: E402

TOWER = {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 2, "image_size": 20, "patch_size": 5, "hidden_act": "quick_gelu",
         "layer_norm_eps": 1e-5}
# CLIPImageProcessor layout (as preprocessor_config.json stores it), scaled down to 20 px.
PREPROCESS = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 20}, "do_center_crop": True,
              "crop_size": {"height": 20, "width": 20}, "resample": 3, "do_rescale": True,
              "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
              "image_std": [0.26862954, 0.26130258, 0.27577711]}
# What VideoLLaMA2 writes: the LLM's config fields plus mm_* fields (4 frames of 4x4 patches -> 8 tokens).
HF = {"architectures": ["Videollama2LlamaForCausalLM"], "model_type": "videollama2_llama", "vocab_size": 64,
      "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
      "max_position_embeddings": 96, "tie_word_embeddings": False, "bos_token_id": 2, "eos_token_id": 3,
      "mm_projector_type": "stc_connector_v35", "mm_hidden_size": 16, "mm_vision_select_layer": -2,
      "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad", "num_frames": 4, "use_mm_proj": True}
TEXTS = ["what is the person doing in the video ?", "the person cuts a red tomato on the board .",
         "describe the kitchen and the hands of the camera wearer ."]
PROMPT = "What is the person doing?"
NEW = 6
VIDEO_ID = 4  # synthetic_tokenizer: <video> is special token 4


def _videos(tmp):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(10, 24, 40, 3), dtype=np.uint8)  # wide frames: "pad" mode matters
    ramp = np.broadcast_to(np.linspace(0, 255, 40, dtype=np.float32)[None, None, :, None], (10, 24, 40, 3))
    ramp = (ramp * np.arange(1, 11)[:, None, None, None] / 10).astype(np.uint8)
    paths = []
    for name, frames in (("a.mp4", noise), ("b.mp4", ramp)):
        video_lib.encode_mp4(frames, str(tmp / name), fps=10)
        paths.append(str(tmp / name))
    return paths


def _random_model(cfg):
    """A VideoLLM with numpy-random weights: no init compiles, and weights large enough that logits
    are well spread (the 0.02 init gives near-ties, so greedy tokens would hinge on float noise)."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: VideoLLM(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(1)
    for path, var in sorted(param_paths(model).items()):
        shape = var.get_value().shape
        if path.endswith("scale"):
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif path.endswith("bias"):
            value = 0.1 * rng.normal(size=shape)
        elif "embed" in path.split("/")[-1] or path.endswith("embed/embedding"):
            value = rng.normal(size=shape)
        else:  # kernels [..., fan_in, out] (stacked / conv kernels: fan_in = all but the last axis)
            stacked = 1 if path.startswith(("llm/layers", "vision/layers")) else 0
            value = rng.normal(size=shape) / np.sqrt(np.prod(shape[stacked:-1]))
        var.set_value(jnp.asarray(value, jnp.float32))
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("videochat")
    tower = tmp / "clip"
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps(TOWER))
    (tower / "preprocessor_config.json").write_text(json.dumps(PREPROCESS))
    cfg = VideoLLMConfig.from_videollama2(HF, VisionConfig.from_hf(TOWER), num_frames=4, video_token_id=VIDEO_ID)
    model = _random_model(cfg)
    tensors = vw.export_videollm(model)
    # Full checkpoint (tower weights inside, tower config found through mm_vision_tower).
    full = tmp / "full"
    save_safetensors(tensors, str(full), max_shard_bytes=200_000)  # sharded: index.json
    (full / "config.json").write_text(json.dumps({**HF, "mm_vision_tower": str(tower)}))
    stok.build_tokenizer(TEXTS, str(full))
    # Projector + LLM only; the tower (weights too) comes from --config.chat.vision_tower.
    vis = {k: v for k, v in tensors.items() if k.startswith(vw.LLAVA_VISION_PREFIX)}
    save_safetensors({"vision_model." + k[len(vw.LLAVA_VISION_PREFIX):]: v for k, v in vis.items()}, str(tower))
    split = tmp / "split"
    save_safetensors({k: v for k, v in tensors.items() if k not in vis}, str(split))
    (split / "config.json").write_text(json.dumps({**HF, "mm_vision_tower": "openai/clip-vit-large-patch14-336"}))
    stok.build_tokenizer(TEXTS, str(split))
    return dict(tmp=tmp, model=model, full=str(full), split=str(split), tower=str(tower), videos=_videos(tmp))


def _config(ckpt, video, **chat_fields):
    c = chat_config.get_config()
    c.checkpoint, c.video, c.prompt = ckpt, video, PROMPT
    c.chat.max_new_tokens = NEW
    for k, v in chat_fields.items():
        c.chat[k] = v
    return c


def _reference_inputs(ckpt, video):
    """Prompt ids and pixels, built here from the file formats (not through chat.py)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    text = tok.apply_chat_template([{"role": "user", "content": "<video>\n" + PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    ids = []
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        ids += [t] * 8 if t == VIDEO_ID else [t]
    info = video_lib.probe(video)
    frames = video_lib.decode_frames(video, [1, 3, 6, 8])  # centres of 4 equal segments of 10 frames
    assert info.num_frames == 10
    pixels = video_lib.resize_crop_normalise(frames, 20, PREPROCESS["image_mean"], PREPROCESS["image_std"],
                                             mode="pad")
    return tok, np.asarray(ids, np.int32), pixels


@nnx.jit
def _forward(model, ids, mask, pixels):
    logits = model(ids, pixels, mask)
    return logits


def _reference_greedy(model, ids, pixels, stop_ids, length=48):
    """Greedy tokens by full forwards over a right-padded buffer (one compile), plus first-step logits."""
    seq, out, first = list(ids), [], None
    px = jnp.asarray(pixels[None, None])
    for _ in range(NEW):
        buf = np.zeros((1, length), np.int32)
        buf[0, :len(seq)] = seq
        mask = (np.arange(length) < len(seq)).astype(np.int32)[None]
        logits = np.asarray(_forward(model, jnp.asarray(buf), jnp.asarray(mask), px))[0, len(seq) - 1]
        first = logits if first is None else first
        nxt = int(np.argmax(logits))
        out.append(nxt)
        seq.append(nxt)
        if nxt in stop_ids:
            break
    return out, first


def test_video_chat_matches_direct_videollm_forward(setup, capsys):
    model = setup["model"]
    results, firsts = [], []
    for i, video in enumerate(setup["videos"]):
        workdir = str(setup["tmp"] / f"run{i}")
        result = chat.run(_config(setup["full"], video), workdir)
        tok, ids, pixels = _reference_inputs(setup["full"], video)
        stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")}
        want, first = _reference_greedy(model, ids, pixels, stop)
        assert result["prompt_tokens"] == len(ids) and result["visual_tokens"] == 8 and result["frames"] == 4
        assert result["token_ids"] == want, (result["token_ids"], want)
        assert result["answer"] == tok.decode(want, skip_special_tokens=True).strip()
        assert result["answer"] in capsys.readouterr().out
        assert json.load(open(os.path.join(workdir, "chat.json")))["token_ids"] == want
        results.append(result)
        firsts.append(first)
    # The video conditions the output: first-step logits differ, and so do the answers here.
    assert np.abs(firsts[0] - firsts[1]).max() > 1e-2
    assert results[0]["token_ids"] != results[1]["token_ids"]
    assert all(r["answer"] for r in results)


def test_video_chat_with_separate_vision_tower(setup):
    video = setup["videos"][0]
    want = chat.run(_config(setup["full"], video), "")["token_ids"]
    got = chat.run(_config(setup["split"], video, vision_tower=setup["tower"]), "")
    assert got["token_ids"] == want
    # Without the tower dir the tower's weights are nowhere (mm_vision_tower is a hub id).
    with pytest.raises(FileNotFoundError, match="holds no model.vision_tower.* pass --config.chat.vision_tower"):
        chat.run(_config(setup["split"], video), "")


def test_video_chat_bad_inputs(setup):
    with pytest.raises(FileNotFoundError, match="--config.video='nope.mp4'"):
        chat.run(_config(setup["full"], "nope.mp4"), "")
    with pytest.raises(ValueError, match="frame_mode"):
        chat.run(_config(setup["full"], setup["videos"][0], frame_mode="stretch"), "")
    with pytest.raises(ValueError, match="2 <video> placeholders"):
        c = _config(setup["full"], setup["videos"][0])
        c.prompt = "<video> and <video>"
        chat.run(c, "")


def test_end_of_turn_ids_follow_the_chat_template(setup):
    from exo2ego_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(setup["full"], extra_special_tokens=("<video>",))
    # Synthetic template: "<|assistant|> answer <|end|>"; decoding stops at <|end|> as well as </s>.
    assert chat.end_of_turn_ids(tok) == sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")})


def test_resolve_tower_sources(setup):
    full, tower = setup["full"], setup["tower"]
    # Tower weights inside the checkpoint, config + preprocessing from the local mm_vision_tower dir.
    spec = vw.resolve_tower(full, {"mm_vision_tower": tower})
    assert spec.weights is None and spec.source == tower and spec.vision.hidden_size == 16
    assert spec.preprocess.output_size == (20, 20)
    # A hub id: the published CLIP-L/14-336 config and CLIP preprocessing.
    spec = vw.resolve_tower(full, {"mm_vision_tower": "openai/clip-vit-large-patch14-336"})
    assert (spec.vision.hidden_size, spec.vision.image_size, spec.vision.num_layers) == (1024, 336, 24)
    assert spec.preprocess.crop == (336, 336) and spec.weights is None
    # An explicit dir wins; without embedded weights it supplies them too.
    spec = vw.resolve_tower(setup["split"], {"mm_vision_tower": "openai/clip-vit-large-patch14-336"}, tower)
    assert spec.weights == tower and spec.vision.hidden_size == 16
    with pytest.raises(FileNotFoundError, match="mm_vision_tower='some/unknown-tower'.*--config.chat.vision_tower"):
        vw.resolve_tower(full, {"mm_vision_tower": "some/unknown-tower"})
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        vw.resolve_tower(full, {}, str(setup["tmp"]))
