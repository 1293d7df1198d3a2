"""The labelling job with a VideoLLaMA3 checkpoint as the teacher (model.arch = "videollama3").

A tiny random VideoLLaMA3 is written as a transformers folder (``save_hf``) beside the synthetic world's
tokenizer and a small ``video_preprocessor_config.json``. The job must sample each ego segment at 1 fps
(capped), write timestamps and one token per kept merged patch into the prompt, and its batched,
bucketed answers must equal the same teacher answering each question alone.
"""
import json
import math
import os

import numpy as np
import pytest
from flax import nnx

from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data.egoexo4d import EgoExo4D
from exo2ego_jax.eval.records import VideoRef
from exo2ego_jax.methods.ego2exo import label as label_lib
from exo2ego_jax.methods.ego2exo import prompts as P
from exo2ego_jax.methods.ego2exo import videollama3_teacher as vt
from exo2ego_jax.models import videollama3 as vl3
from exo2ego_jax.models.llm import LLMConfig
from exo2ego_jax.tokenizer import load_tokenizer
from exo2ego_jax.weights import videollama3_weights as vw
from helpers import load_config, write_label_world

MAX_FRAMES = 3  # cap of the 1-fps sampling (the paper's 180 at full size)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vl3_world"))
    ckpt = os.path.join(root, "vl3")
    write_label_world(root, ckpt, action_seconds=(0.4, 2.5), ego_size=32, exo_size=(32, 48))
    tok = load_tokenizer(ckpt, extra_special_tokens=())
    vocab = len(tok.get_vocab())
    model = vl3.VideoLlama3(vl3.VideoLlama3Config(
        vision=vl3.VideoLlama3VisionConfig(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
                                           patch_size=4),
        llm=LLMConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, max_position_embeddings=2048, attention_bias=True,
                      model_type="qwen2", eos_token_id=tok.eos_token_id),
        image_token_id=5, video_token_id=4), rngs=nnx.Rngs(0))  # synthetic tokenizer: <video> 4, <probe> 5
    vw.save_hf(model, ckpt)
    with open(os.path.join(ckpt, "video_preprocessor_config.json"), "w") as f:  # 32x32 frames: 8x8 patches
        json.dump({"size": {"shortest_edge": 16, "longest_edge": 32 * 32 * MAX_FRAMES}, "patch_size": 4,
                   "merge_size": 2}, f)
    return root, ckpt


def _config(root, ckpt, work_segments):
    c = load_config("configs/ego2exo/label.py")
    c.unlock()
    assert c.model.arch == "videollama3"  # the authors' teacher is the default
    c.model.checkpoint = ckpt
    c.data.tokenizer = ckpt
    c.label.root = root
    c.label.video_variant = "full"
    c.label.max_frames = MAX_FRAMES
    c.label.frame_buckets = (2, MAX_FRAMES)
    c.label.max_new_tokens = 5
    c.label.batch_size = 6
    c.label.max_segments = work_segments
    return c


def test_videollama3_teacher_labels_equal_single_runs(setup, tmp_path):
    root, ckpt = setup
    c = _config(root, ckpt, 4)
    stats = label_lib.label(c, str(tmp_path / "labels"))
    assert stats["labelled"] == 4
    data = P.validate_llava_json(str(tmp_path / "labels" / "labels.json"))
    assert len(data) == 12 and all(r["teacher"] == ckpt for r in data)

    teacher = vt.VideoLlama3Teacher.load(ckpt, fps=1.0, max_frames=MAX_FRAMES, system_prompt=P.SYSTEM_PROMPT,
                                         max_new_tokens=5)
    segs = label_lib.segments_to_label(EgoExo4D(root, video_variant="full"), "train")[:4]
    buckets = set()
    for seg in segs:
        ref = VideoRef(seg.ego_path, seg.start, seg.end)
        feats = vt.clip_frames(ref, teacher.clips.pcfg)
        fps = video_lib.probe(seg.ego_path).fps
        want = min(MAX_FRAMES, max(4, (seg.end - seg.start) * 1.0), math.ceil(seg.end * fps) - math.floor(seg.start * fps))
        assert feats.grid_thw[0] == math.floor(want)  # 1 fps, at least 4 (processor), capped
        assert feats.timestamps[0] == 0.0  # times count from the segment's start
        bucket = label_lib.frame_count(seg, c.label)
        buckets.add(bucket)
        single = teacher.with_frames(bucket)
        text = single.prompt_text("q", feats)
        assert text.count("Time ") == feats.grid_thw[0] and "Time 0.0s:<video>" in text and f",Time {feats.timestamps[1]:.1f}s:<video>" in text
        ids = single.prompt_ids("q", feats)
        assert ids.count(4) == int(feats.keep.sum())
        recs = [r for r in data if r["segment_id"] == seg.segment_id]
        for r in recs:
            q = r["conversations"][0]["value"].split("\n", 1)[1]
            answers, _ = single.generate([q], [ref], max_new_tokens=5)
            assert r["conversations"][1]["value"] == answers[0], (seg.segment_id, r["category"])
    assert buckets == {2, MAX_FRAMES}  # both frame buckets (two compiles) were exercised


def test_unknown_teacher_arch_is_refused_by_name(setup, tmp_path):
    root, ckpt = setup
    c = _config(root, ckpt, 1)
    c.model.arch = "videollama2"
    with pytest.raises(ValueError, match=r"config.model.arch='videollama2'.*'videollama3', 'llava_video'"):
        label_lib.label(c, str(tmp_path / "x"))
    c.model.arch = "videollama3"
    c.label.sampling = "uniform"
    with pytest.raises(ValueError, match="config.label.sampling='uniform'"):
        label_lib.label(c, str(tmp_path / "z"))
    c.label.sampling = "fps"
    c.model.checkpoint = ""
    with pytest.raises(ValueError, match="needs config.model.checkpoint"):
        label_lib.label(c, str(tmp_path / "y"))


def test_patch_and_length_buckets():
    assert vt.patch_buckets(2, 196) == (4, 8, 16, 32, 64, 128, 256)
    assert vt.patch_buckets(2, 256) == (4, 8, 16, 32, 64, 128, 256)
    assert vt.patch_buckets(1, 1) == (1,)
    assert vt.length_buckets(1000) == (128, 256, 512, 1000)


@pytest.mark.slow  # ~60 s: label -> train -> relabel chain; the pieces are fast-tested above
def test_label_student_and_relabel_with_the_trained_videollama3(setup, tmp_path):
    """label (VideoLLaMA3 checkpoint) -> one trainer step of the VideoLLaMA3 student from that checkpoint
    on those labels -> label again with the trained run as teacher_workdir."""
    from exo2ego_jax.train import loop

    root, ckpt = setup
    labels = str(tmp_path / "labels")
    label_lib.label(_config(root, ckpt, 2), labels)
    s = load_config("configs/ego2exo/student.py", "probes=2,frames=3")
    s.unlock()
    s.model.checkpoint = s.data.tokenizer = ckpt
    s.model.probe_token_id = 5  # synthetic tokenizer's <probe>
    s.data.instructions = (os.path.join(labels, "labels.json"),)
    s.data.data_folder = root
    s.data.patch_size, s.data.frame_max_pixels, s.data.frame_min_pixels, s.data.max_len = 4, 32 * 32, 8 * 8, 256
    s.data.num_probes, s.data.read_threads = 2, 1
    s.ego2exo.lora_rank = 4
    s.train.steps, s.train.epochs, s.train.warmup_steps, s.train.global_batch = 1, 0.0, 0, 8
    s.train.log_every, s.train.ckpt_every, s.train.async_ckpt, s.train.progress = 1, 0, False, False
    s.lock()
    run = str(tmp_path / "run")
    assert np.isfinite(loop.train(s, run)["loss"])

    c = _config(root, ckpt, 2)
    c.label.teacher_workdir = run
    stats = label_lib.label(c, str(tmp_path / "relabel"))
    assert stats["labelled"] == 2
    data = P.validate_llava_json(str(tmp_path / "relabel" / "labels.json"))
    assert len(data) == 6 and {r["teacher"] for r in data} == {run}
