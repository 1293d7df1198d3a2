"""The numpy VideoLLaMA3 processor vs transformers' reference.

The reference image processor (PIL backend) runs here and is compared directly. The reference
video processor imports torchvision, which does not load beside this CPU torch: its rules (frame
sampling, shared pixel budget, merge size 2, token compression, timestamped prompt) are checked
against the reference's pieces that do run (the PIL image processor per frame, torch.arange,
``VideoLlama3Processor.replace_video_token``) and hand-computed cases.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.models.video_llama_3.image_processing_pil_video_llama_3 import (  # noqa: E402
    VideoLlama3ImageProcessorPil)
from transformers.models.video_llama_3.processing_video_llama_3 import VideoLlama3Processor  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

from exo2ego_jax.data import videollama3_processor as vp  # noqa: E402

CFG = vp.VideoLlama3ProcessorConfig()


def _image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h,w", [(90, 130), (30, 20), (333, 47)])
def test_image_matches_reference(h, w):
    img = _image(h, w, h)
    ref = VideoLlama3ImageProcessorPil()(images=[img], return_tensors="np")
    ours = vp.process_image(img, CFG)
    np.testing.assert_array_equal(ref["image_grid_thw"][0], ours.grid_thw)
    assert ref["image_merge_sizes"].tolist() == [ours.merge_size] == [1]
    np.testing.assert_allclose(ours.pixel_values, ref["pixel_values"], atol=1e-6, rtol=0)


def test_smart_resize_budget():
    # 1920x1080 video frames, 16 of them share 28*28*768 pixels: 28-multiples within 28*28*48 each.
    h, w = vp.smart_resize(1080, 1920, 28, CFG.video_min_pixels, CFG.video_max_pixels // 16)
    assert (h % 28, w % 28) == (0, 0) and h * w <= 28 * 28 * 768 // 16
    # beta = sqrt(1080 * 1920 / 37632) = 7.42: floor(1080 / beta / 28) * 28 = 140, floor(1920 / beta / 28) * 28
    # = 252. The budget is checked before min_pixels (here 128*28*28 > the per-frame budget), as the reference.
    assert (h, w) == (140, 252)
    assert vp.smart_resize(10, 10, 28, 56 * 56, 28 * 28 * 1280) == (56, 56)  # below min: scaled up
    with pytest.raises(ValueError, match="aspect ratio"):
        vp.smart_resize(1, 300, 28, 56 * 56, 10**6)


def test_video_frames_match_reference_image_processor():
    """A clip = its frames through the reference resize/normalise at merge 2 with the budget split T ways."""
    frames = np.stack([_image(70, 110, s) for s in range(5)])
    ours = vp.process_video(frames, [0.0, 1.0, 2.0, 3.0, 4.0], CFG)
    per_frame = VideoLlama3ImageProcessorPil(merge_size=2, size={"shortest_edge": CFG.video_min_pixels,
                                                                 "longest_edge": CFG.video_max_pixels // 5})
    ref = per_frame(images=list(frames), return_tensors="np")
    t, h, w = ours.grid_thw
    assert t == 5 and ours.merge_size == 2
    assert {tuple(g) for g in ref["image_grid_thw"]} == {(1, h, w)}
    np.testing.assert_allclose(ours.pixel_values, ref["pixel_values"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("total,video_fps", [(300, 30.0), (7, 2.0), (10000, 25.0), (90, 29.97)])
def test_frame_sampling_rule(total, video_fps):
    idx = vp.sample_frame_indices(total, video_fps, fps=1.0, min_frames=4, max_frames=180)
    n = int(min(max(total / video_fps, 4), 180, total))
    assert len(idx) == n  # 1 fps, at least 4 frames, capped at 180 (the teacher's setting)
    np.testing.assert_array_equal(idx, torch.arange(0, total, total / n).int().numpy())


def test_compression_and_timestamped_prompt_match_reference():
    base = _image(56, 84, 0)
    frames = np.stack([base, base, base.copy(), _image(56, 84, 1)])
    frames[2, :28, :28] = 255 - frames[2, :28, :28]  # one 28x28 block changes in frame 2
    cfg = vp.VideoLlama3ProcessorConfig(video_min_pixels=28 * 28, video_max_pixels=56 * 84 * 4)
    ours = vp.process_video(frames, [0.0, 0.5, 1.0, 1.5], cfg)
    assert ours.grid_thw == (4, 4, 6)
    keep = ours.keep_per_frame()
    assert keep[0].all() and keep[3].all()
    assert keep[1].tolist() == [True] + [False] * 5  # unchanged: only min_tokens=1 kept
    assert keep[2].tolist() == [True] + [False] * 5  # only the changed block
    # The reference processor's prompt expansion on the same grid / mask / metadata.
    ref_proc = VideoLlama3Processor.__new__(VideoLlama3Processor)
    ref_proc.video_token = "<|video_pad|>"
    meta = VideoMetadata(total_num_frames=8, fps=2.0, frames_indices=[0, 1, 2, 3])
    video_inputs = {"video_grid_thw": torch.tensor([ours.grid_thw]), "video_merge_sizes": torch.tensor([2]),
                    "video_compression_mask": torch.from_numpy(ours.keep), "video_metadata": [meta]}
    ref_text = ref_proc.replace_video_token(video_inputs, 0)
    assert vp.video_placeholder(ours) == ref_text
    assert ref_text.startswith("Time 0.0s:" + "<|video_pad|>" * 6 + ",Time 0.5s:<|video_pad|>,")
    text = vp.expand_prompt("<|im_start|>user\n<|video_pad|>What happens?", videos=[ours], cfg=cfg)
    assert text.count("<|video_pad|>") == int(ours.keep.sum()) == 14


def test_expand_prompt_errors():
    with pytest.raises(ValueError, match="1 <|video_pad|> but 0 items"):
        vp.expand_prompt("<|video_pad|>", videos=[])


def test_collate_buckets_left_pads_and_keeps_masks():
    from exo2ego_jax.models.videollama3 import check_visual_placeholders

    cfg = vp.VideoLlama3ProcessorConfig(video_min_pixels=28 * 28, video_max_pixels=56 * 84 * 4)
    a = vp.process_video(np.stack([_image(56, 84, s) for s in range(4)]), [0, 1, 2, 3], cfg)  # 4 x (4x6)
    still = _image(60, 30, 9)
    b = vp.process_video(np.stack([still, still]), [0, 1], cfg)  # 2 identical frames: compression
    assert b.grid_thw[1:] != a.grid_thw[1:]
    ids = [[1] + [50] * int(v.keep.sum()) + [2, 3] for v in (a, b)]
    batch = vp.collate(ids, [a, b], pad_id=0, length_buckets=(16, 64, 128), frame_buckets=(4, 8),
                       patch_buckets=(16, 32, 64))
    n_a, n_b = len(ids[0]), len(ids[1])
    assert batch.input_ids.shape == (2, 64) and batch.patches.shape == (2, 4, 32, 3 * 14 * 14)
    assert batch.attention_mask.sum(1).tolist() == [n_a, n_b] and batch.attention_mask[1, -n_b:].all()
    assert batch.grid_hw[1].tolist() == [[b.grid_thw[1], b.grid_thw[2]], [b.grid_thw[1], b.grid_thw[2]], [0, 0], [0, 0]]
    np.testing.assert_array_equal(batch.patches[0, 2, :24], a.pixel_values[48:72])
    assert not batch.patches[1, 2:].any() and not batch.keep[1, 2:].any()
    check_visual_placeholders(batch.input_ids, 50, batch.grid_hw, 2, batch.keep)
    with pytest.raises(ValueError, match="4 frames exceed the largest bucket 2"):
        vp.collate(ids, [a, b], length_buckets=(64,), frame_buckets=(2,), patch_buckets=(32,))
