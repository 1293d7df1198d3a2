"""configs/chat.py with a VideoLLaMA3 checkpoint directory, end to end against transformers' generate().

A tiny random ``VideoLlama3ForConditionalGeneration`` is saved with ``save_pretrained`` beside a word-level
tokenizer and a small ``video_preprocessor_config.json``; an mp4 with a static background and a moving
square exercises 1-fps sampling and token compression. The reference prompt is rendered here with the
tokenizer's template and transformers' own ``VideoLlama3Processor.replace_video_token``.
"""

import json
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.models.video_llama_3.processing_video_llama_3 import VideoLlama3Processor  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import chat as chat_config  # noqa: E402
from exo2ego_jax import chat  # noqa: E402
from exo2ego_jax.synthetic import tokenizer as stok  # noqa: E402
from exo2ego_jax.data import video as video_lib  # noqa: E402
from exo2ego_jax.data import videollama3_processor as vp  # noqa: E402

TEXTS = ["what is the person doing in the video ?", "the person moves a white square .", "time s"]
PROMPT = "What is the person doing?"
NEW = 6
VIDEO_ID, IMAGE_ID, EOS = 4, 5, 3  # synthetic_tokenizer: <video>, <probe>, </s>


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vl3chat")
    cfg = transformers.VideoLlama3Config(
        text_config=dict(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                         eos_token_id=EOS, bos_token_id=2, tie_word_embeddings=False),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=4),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    torch.manual_seed(0)
    model = transformers.VideoLlama3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # spread-out logits: greedy tokens must not hinge on float noise
        for name, p in model.named_parameters():
            p.normal_(0.0, 1.0 / np.sqrt(p.shape[-1]) if p.ndim > 1 and "embed" not in name else 0.5)
            if "norm" in name:
                p.add_(1.0)
    ckpt = tmp / "ckpt"
    model.save_pretrained(ckpt)
    stok.build_tokenizer(TEXTS, str(ckpt))
    # 10 frames of 24x40 at 2 fps -> 5 frames at 1 fps; 960 px per frame (patch 4, merge 2: 6x10 patches).
    (ckpt / "video_preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 64, "longest_edge": 960 * 5}, "patch_size": 4, "merge_size": 2}))
    frames = np.full((10, 24, 40, 3), 40, np.uint8)
    for i in range(10):
        frames[i, 4:12, 3 * i:3 * i + 8] = 255
    video = str(tmp / "clip.mp4")
    video_lib.encode_mp4(frames, video, fps=2, crf=0)
    return dict(model=model, ckpt=str(ckpt), video=video, tmp=tmp)


def _reference(setup):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(setup["ckpt"])
    pcfg = vp.VideoLlama3ProcessorConfig.from_dir(setup["ckpt"])
    info = video_lib.probe(setup["video"])
    idx = np.arange(0, 10, 2)  # 1 fps of a 2-fps clip
    feats = vp.process_video(video_lib.decode_frames(setup["video"], idx), idx / info.fps, pcfg)
    proc = VideoLlama3Processor.__new__(VideoLlama3Processor)
    proc.video_token = "<video>"
    meta = VideoMetadata(total_num_frames=10, fps=2.0, frames_indices=idx.tolist())
    inputs = {"video_grid_thw": torch.tensor([feats.grid_thw]), "video_merge_sizes": torch.tensor([2]),
              "video_compression_mask": torch.from_numpy(feats.keep), "video_metadata": [meta]}
    text = tok.apply_chat_template([{"role": "user", "content": "<video>\n" + PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    text = text.replace("<video>", proc.replace_video_token(inputs, 0))
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    end = tok.convert_tokens_to_ids("<|end|>")
    gen = transformers.GenerationConfig(max_new_tokens=NEW, do_sample=False, eos_token_id=[EOS, end], pad_token_id=0)
    with torch.no_grad():
        out = setup["model"].generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      pixel_values_videos=torch.from_numpy(feats.pixel_values),
                                      video_grid_thw=inputs["video_grid_thw"], video_merge_sizes=torch.tensor([2]),
                                      video_compression_mask=inputs["video_compression_mask"], generation_config=gen)
    return ids.shape[1], feats, out[0, ids.shape[1]:].tolist()


def test_chat_answers_about_video_like_transformers(setup):
    c = chat_config.get_config()
    c.checkpoint, c.video, c.prompt = setup["ckpt"], setup["video"], PROMPT
    c.chat.max_new_tokens = NEW
    workdir = str(setup["tmp"] / "run")
    result = chat.run(c, workdir)
    n_prompt, feats, want = _reference(setup)
    assert result["frames"] == 5 and result["timestamps"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # The square moves 3 px per source frame: compression drops merged tokens it never touches.
    assert result["visual_tokens"] == int(feats.keep.sum()) < 5 * 15
    assert result["prompt_tokens"] == n_prompt
    print("chat", result["token_ids"], "transformers", want, "visual tokens", result["visual_tokens"])
    assert result["token_ids"] == want
    assert json.load(open(os.path.join(workdir, "chat.json")))["token_ids"] == result["token_ids"]


def test_batched_teacher_answers_equal_single_runs(setup):
    """Labelling path: clips of 5 and 4 frames, different frame sizes, one bucketed left-padded batch
    (collate -> batch_embeddings -> generate) gives each clip's batch-of-1 tokens."""
    from exo2ego_jax.generate import generate
    from exo2ego_jax.videollama3_chat import batch_embeddings
    from exo2ego_jax.weights import videollama3_weights

    model = videollama3_weights.load_videollama3_dir(setup["ckpt"])
    pcfg = vp.VideoLlama3ProcessorConfig.from_dir(setup["ckpt"], patch_size=4)
    a = vp.sample_video(video_lib.decode_frames(setup["video"], range(10)), 2.0, pcfg)
    rng = np.random.default_rng(5)
    b = vp.process_video(rng.integers(0, 256, size=(4, 40, 24, 3), dtype=np.uint8), [0, 1, 2, 3], pcfg)
    assert a.grid_thw[0] == 5 and b.grid_thw[0] == 4 and a.grid_thw[1:] != b.grid_thw[1:]
    ids = [[2, 7, 8] + [VIDEO_ID] * int(v.keep.sum()) + [9, 10] for v in (a, b)]
    buckets = dict(length_buckets=(128,), frame_buckets=(8,), patch_buckets=(64,))
    embeds, mask = batch_embeddings(model, vp.collate(ids, [a, b], **buckets))
    both = generate(model.llm, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=NEW, eos_token_id=EOS)
    for i, v in enumerate((a, b)):
        t, h, w = v.grid_thw
        one = vp.collate([ids[i]], [v], length_buckets=(len(ids[i]),), frame_buckets=(t,), patch_buckets=(h * w,))
        e1, m1 = batch_embeddings(model, one)
        single = generate(model.llm, inputs_embeds=e1, attention_mask=m1, max_new_tokens=NEW, eos_token_id=EOS)
        n = int(single.lengths[0])
        assert both.tokens[i, :n].tolist() == single.tokens[0, :n].tolist() and both.lengths[i] == n
