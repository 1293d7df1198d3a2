"""VideoLLaMA3's processor in numpy: frame sampling, resize within a pixel budget, patches, prompts.

The rules are those of transformers' ``VideoLlama3ImageProcessor`` / ``VideoLlama3VideoProcessor`` /
``VideoLlama3Processor`` (the video one needs torchvision; its rules are re-implemented here):

* sampling: ``fps`` frames per second of the clip, clamped to ``[min_frames, max_frames]`` and the
  clip length, at indices ``arange(0, total, total / n)`` truncated; timestamps ``index / video_fps``.
  Ego2ExoVLM's teacher samples at 1 fps with at most 180 frames (``TEACHER_FPS``, ``TEACHER_MAX_FRAMES``).
* resize: height and width rounded to multiples of ``patch_size * merge_size`` (28 for video) keeping
  the aspect ratio, the area inside ``[min_pixels, max_pixels]``; for a video the budget
  ``max_pixels`` is shared by all its frames (``max_pixels // num_frames`` per frame). Bicubic.
* pixels: ``/ 255``, then ``(x - 0.5) / 0.5``; patches of ``C x p x p`` laid out block-major
  (each ``merge_size x merge_size`` block contiguous), ``grid_thw = (frames, h / p, w / p)``.
* video token compression (default on in the reference): a merged token of frame t > 0 is dropped
  when the mean absolute difference of its patches to frame t-1, in 0..255 units, is <= 0.1
  (at least one token per frame is kept).
* prompts: each video placeholder becomes ``Time {t:.1f}s:<|video_pad|>...`` per frame, joined by
  ``,``; each image placeholder becomes ``h*w`` (merge 1) ``<|image_pad|>``.

Resizing uses PIL's bicubic filter (as the reference image processor); the reference video
processor resizes with torchvision's antialiased bicubic, which can differ by a grey level on some
pixels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from exo2ego_jax.models.videollama3 import IMAGE_MEAN, IMAGE_STD

# Ego2ExoVLM (authors' labelling code): the VideoLLaMA3-7B teacher reads ego keystep segments at
# 1 frame per second, at most 180 frames.
TEACHER_FPS = 1.0
TEACHER_MAX_FRAMES = 180


@dataclasses.dataclass(frozen=True)
class VideoLlama3ProcessorConfig:
    """Processor settings; defaults are transformers' VideoLLaMA3 image / video processor defaults."""

    patch_size: int = 14
    image_merge_size: int = 1
    video_merge_size: int = 2
    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 28 * 28 * 1280
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 28 * 28 * 768  # shared by all frames of a clip
    fps: float = TEACHER_FPS
    min_frames: int = 4
    max_frames: int = TEACHER_MAX_FRAMES
    use_token_compression: bool = True
    compression_threshold: float = 0.1  # mean |pixel difference| in 0..255 units
    image_mean: tuple[float, float, float] = IMAGE_MEAN
    image_std: tuple[float, float, float] = IMAGE_STD
    image_token: str = "<|image_pad|>"
    video_token: str = "<|video_pad|>"

    @classmethod
    def from_dir(cls, path: str, **overrides) -> "VideoLlama3ProcessorConfig":
        """Reads a checkpoint's ``preprocessor_config.json`` (images) and ``video_preprocessor_config.json``
        (videos) where present (transformers' field names: ``size.shortest_edge / longest_edge`` or
        ``min_pixels / max_pixels``, ``patch_size``, ``merge_size``, ``image_mean`` ...); defaults otherwise."""
        kw: dict = {}
        for name, prefix in (("preprocessor_config.json", "image"), ("video_preprocessor_config.json", "video")):
            f = os.path.join(path, name)
            if not os.path.exists(f):
                continue
            with open(f) as fh:
                d = json.load(fh)
            size = d.get("size") or {}
            lo, hi = size.get("shortest_edge", d.get("min_pixels")), size.get("longest_edge", d.get("max_pixels"))
            if lo is not None:
                kw[f"{prefix}_min_pixels"] = int(lo)
            if hi is not None:
                kw[f"{prefix}_max_pixels"] = int(hi)
            if "merge_size" in d:
                kw[f"{prefix}_merge_size"] = int(d["merge_size"])
            for k in ("patch_size", "image_mean", "image_std"):
                if k in d:
                    kw[k] = tuple(d[k]) if isinstance(d[k], list) else d[k]
            if prefix == "video":
                for k in ("min_frames", "max_frames", "use_token_compression"):
                    if d.get(k) is not None:
                        kw[k] = d[k]
        kw.update(overrides)
        return cls(**kw)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(h, w) multiples of ``factor`` closest to the input's aspect ratio with area in [min, max]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frame of {height}x{width}: aspect ratio {max(height, width) / min(height, width):.0f} "
                         "exceeds 200, which VideoLLaMA3's processor refuses.")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def sample_frame_indices(total_frames: int, video_fps: float, *, fps: float | None = TEACHER_FPS,
                         num_frames: int | None = None, min_frames: int = 4,
                         max_frames: int = TEACHER_MAX_FRAMES) -> np.ndarray:
    """Indices of the frames to keep (int32), by ``fps`` (clamped) or a fixed ``num_frames``."""
    if fps is not None and num_frames is not None:
        raise ValueError("sample_frame_indices: pass fps or num_frames, not both.")
    if total_frames <= 0:
        raise ValueError(f"sample_frame_indices: the clip has {total_frames} frames.")
    if num_frames is None and fps is not None:
        if not video_fps or video_fps <= 0:
            raise ValueError(f"sample_frame_indices: sampling at {fps} fps needs the clip's frame rate, got "
                             f"{video_fps!r}.")
        cap = min(max_frames, total_frames)
        num_frames = min(max(total_frames / video_fps * fps, min_frames), cap, total_frames)
        num_frames = math.floor(num_frames)
    if num_frames is None:
        return np.arange(total_frames, dtype=np.int32)
    if num_frames > total_frames:
        raise ValueError(f"sample_frame_indices: {num_frames} frames asked of a {total_frames}-frame clip.")
    # The reference's torch.arange(0, total, total / n).int(): values i * step in double, stored
    # as float32 (torch's default dtype), then truncated.
    step = total_frames / num_frames
    count = math.ceil(total_frames / step)
    return (np.arange(count, dtype=np.float64) * step).astype(np.float32).astype(np.int32)


def _resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"VideoLLaMA3 processor: frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}.")
    if frame.shape[:2] == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))


def _normalise(frames: np.ndarray, cfg: VideoLlama3ProcessorConfig) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W]."""
    x = frames.astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return x.transpose(0, 3, 1, 2)


def patchify(frames: np.ndarray, patch_size: int, merge_size: int) -> tuple[np.ndarray, int, int]:
    """[T, C, H, W] -> patches [T*gh*gw, C*p*p] block-major per frame, gh, gw."""
    t, c, hh, ww = frames.shape
    gh, gw, m, p = hh // patch_size, ww // patch_size, merge_size, patch_size
    x = frames.reshape(t, c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 2, 5, 3, 6, 1, 4, 7)  # t, bh, bw, mh, mw, c, ph, pw
    return np.ascontiguousarray(x.reshape(t * gh * gw, c * p * p)), gh, gw


@dataclasses.dataclass
class VisualFeatures:
    """Processor output for one image or one clip (the reference's per-item slice)."""

    pixel_values: np.ndarray  # [T*h*w, C*p*p] float32
    grid_thw: tuple[int, int, int]
    merge_size: int
    keep: np.ndarray  # [T*h*w / m**2] bool: token-compression mask (all True for images)
    timestamps: tuple[float, ...] = ()

    def frames(self) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """[(patches [h*w, C*p*p], (h, w)) per frame] for ``models.videollama3.pad_frames``."""
        t, h, w = self.grid_thw
        return [(self.pixel_values[i * h * w:(i + 1) * h * w], (h, w)) for i in range(t)]

    def keep_per_frame(self) -> np.ndarray:
        t = self.grid_thw[0]
        return self.keep.reshape(t, -1)


def process_image(image: np.ndarray, cfg: VideoLlama3ProcessorConfig = VideoLlama3ProcessorConfig()) -> VisualFeatures:
    """One uint8 [H, W, 3] image."""
    m = cfg.image_merge_size
    h, w = smart_resize(image.shape[0], image.shape[1], cfg.patch_size * m, cfg.image_min_pixels, cfg.image_max_pixels)
    x = _normalise(_resize(image, h, w)[None], cfg)
    patches, gh, gw = patchify(x, cfg.patch_size, m)
    return VisualFeatures(patches, (1, gh, gw), m, np.ones(gh * gw // (m * m), bool))


def compression_mask(pixel_values: np.ndarray, grid_thw: tuple[int, int, int], merge_size: int,
                     threshold: float = 0.1, min_tokens: int = 1) -> np.ndarray:
    """Reference video token compression: keep a merged token unless it barely changed since the last frame."""
    t, h, w = grid_thw
    n = (h // merge_size) * (w // merge_size)
    if t == 1:
        return np.ones(n, bool)
    x = pixel_values.reshape(t, n, -1)
    diff = np.abs(x[1:] - x[:-1]).mean(-1) * 255
    diff = np.concatenate([np.full((1, n), threshold + 1, diff.dtype), diff])
    mask = diff > threshold
    mask[mask.sum(1) < min_tokens, :min_tokens] = True
    return mask.reshape(-1)


def process_video(frames: np.ndarray, timestamps: Sequence[float],
                  cfg: VideoLlama3ProcessorConfig = VideoLlama3ProcessorConfig()) -> VisualFeatures:
    """Sampled uint8 frames [T, H, W, 3] of one clip (see ``sample_frame_indices``) and their times (s)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(timestamps) != frames.shape[0]:
        raise ValueError(f"process_video: frames {frames.shape} and {len(timestamps)} timestamps; expected "
                         "[T, H, W, 3] and T timestamps.")
    m, t = cfg.video_merge_size, frames.shape[0]
    h, w = smart_resize(frames.shape[1], frames.shape[2], cfg.patch_size * m, cfg.video_min_pixels,
                        cfg.video_max_pixels // t)
    x = _normalise(np.stack([_resize(f, h, w) for f in frames]), cfg)
    patches, gh, gw = patchify(x, cfg.patch_size, m)
    grid = (t, gh, gw)
    keep = (compression_mask(patches, grid, m, cfg.compression_threshold) if cfg.use_token_compression
            else np.ones(t * gh * gw // (m * m), bool))
    return VisualFeatures(patches, grid, m, keep, tuple(float(s) for s in timestamps))


def sample_video(frames: np.ndarray, video_fps: float,
                 cfg: VideoLlama3ProcessorConfig = VideoLlama3ProcessorConfig()) -> VisualFeatures:
    """All decoded frames [N, H, W, 3] of a clip -> sampled at ``cfg.fps`` (capped) and processed."""
    idx = sample_frame_indices(len(frames), video_fps, fps=cfg.fps, min_frames=cfg.min_frames,
                               max_frames=cfg.max_frames)
    return process_video(np.asarray(frames)[idx], idx / video_fps, cfg)


def video_placeholder(video: VisualFeatures, token: str = "<|video_pad|>") -> str:
    """The text one video stands for: ``Time {t:.1f}s:`` + one token per kept merged token, per frame."""
    per_frame = video.keep_per_frame().sum(1)
    return ",".join(f"Time {t:.1f}s:" + token * int(n) for n, t in zip(per_frame, video.timestamps))


def image_placeholder(image: VisualFeatures, token: str = "<|image_pad|>") -> str:
    return token * int(image.keep.sum())


def expand_prompt(text: str, *, images: Sequence[VisualFeatures] = (), videos: Sequence[VisualFeatures] = (),
                  cfg: VideoLlama3ProcessorConfig = VideoLlama3ProcessorConfig()) -> str:
    """Replaces the k-th image / video token of ``text`` with the k-th item's placeholder text."""
    for token, items, fn in ((cfg.image_token, images, image_placeholder),
                             (cfg.video_token, videos, video_placeholder)):
        parts = text.split(token)
        if len(parts) - 1 != len(items):
            raise ValueError(f"expand_prompt: the text has {len(parts) - 1} {token} but {len(items)} items were given.")
        text = parts[0] + "".join(fn(item, token) + rest for item, rest in zip(items, parts[1:]))
    return text


def _bucket(n: int, buckets: Sequence[int], what: str) -> int:
    fits = [b for b in sorted(buckets) if b >= n]
    if not fits:
        raise ValueError(f"collate: {n} {what} exceed the largest bucket {max(buckets)}; add a bucket or lower "
                         "the frame cap / pixel budget.")
    return fits[0]


@dataclasses.dataclass
class VideoBatch:
    """A left-padded batch for ``VideoLlama3.embed_inputs`` + ``generate`` (static shapes per bucket)."""

    input_ids: np.ndarray  # [B, T] int32, left-padded
    attention_mask: np.ndarray  # [B, T] int32
    patches: np.ndarray  # [B, F, P, C*p*p] float32
    grid_hw: np.ndarray  # [B, F, 2] int32; (0, 0) = padding frame
    keep: np.ndarray  # [B, F, P / m**2] bool: token-compression mask (False on padding)


def collate(ids: Sequence[Sequence[int]], videos: Sequence[VisualFeatures], *, pad_id: int = 0,
            length_buckets: Sequence[int], frame_buckets: Sequence[int], patch_buckets: Sequence[int]) -> VideoBatch:
    """One clip per sample -> a padded batch whose shapes are the smallest buckets that fit.

    ``ids`` are each sample's prompt ids with its video already expanded (``expand_prompt``);
    prompts are left-padded (batched decoding), frames and patch slots zero-padded. Bucketing keeps
    the number of compiled shapes small when clip lengths and frame sizes vary (teacher labelling).
    """
    if len(ids) != len(videos):
        raise ValueError(f"collate: {len(ids)} prompts but {len(videos)} videos.")
    m = {v.merge_size for v in videos}
    if len(m) != 1:
        raise ValueError(f"collate: videos with merge sizes {sorted(m)} cannot share a batch.")
    m = m.pop()
    t = _bucket(max(len(x) for x in ids), length_buckets, "prompt tokens")
    f = _bucket(max(v.grid_thw[0] for v in videos), frame_buckets, "frames")
    p = _bucket(max(v.grid_thw[1] * v.grid_thw[2] for v in videos), patch_buckets, "patches per frame")
    if p % (m * m):
        raise ValueError(f"collate: patch bucket {p} is not a multiple of merge_size**2 = {m * m}.")
    b, dim = len(ids), videos[0].pixel_values.shape[-1]
    out = VideoBatch(np.full((b, t), pad_id, np.int32), np.zeros((b, t), np.int32),
                     np.zeros((b, f, p, dim), np.float32),
                     np.zeros((b, f, 2), np.int32), np.zeros((b, f, p // (m * m)), bool))
    for i, (row, v) in enumerate(zip(ids, videos)):
        out.input_ids[i, t - len(row):] = row
        out.attention_mask[i, t - len(row):] = 1
        keep = v.keep_per_frame()
        for j, (patches, (h, w)) in enumerate(v.frames()):
            out.patches[i, j, : h * w] = patches
            out.grid_hw[i, j] = (h, w)
            out.keep[i, j, : keep.shape[1]] = keep[j]
    return out
