"""Grain building blocks of the input pipelines: clip loading, skip markers, batching, skip tally.

Bad input never raises inside a transform: the per-example fill returns a *skip marker*
(``{SKIP: (reason, path, detail)}``). :class:`BatchTransform` builds static batches (a skipped or
missing example is an all-zero slot with ``example_mask = 0`` and labels -100) and attaches the markers, so skips
made in worker processes travel with the batches. :class:`SkipTallyDataset`, in the main
process after prefetching, strips them into a :class:`SkipCounter`, stores that counter in the
iterator state (so counts survive checkpoint/resume) and stops the job past the skip fraction.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Sequence

import grain
import numpy as np

from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data.text import IGNORE_INDEX
from exo2ego_jax.data.skips import SkipCounter

SKIP = "__skip__"
SKIPS_KEY = "_skips"  # list of (reason, path, detail) attached to a batch
SEEN_KEY = "_seen"    # number of inputs (good + skipped) that went into a batch


def skip(reason: str, path: str, detail: str = "") -> dict[str, Any]:
    """A skip marker (what a transform returns instead of an example)."""
    return {SKIP: (str(reason), str(path), str(detail)[:200])}


def is_skip(item: Any) -> bool:
    return isinstance(item, dict) and SKIP in item


# --- video --------------------------------------------------------------------------------------
def _source_crop(h: int, w: int, mode: str) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the centred square a "center_crop" keeps, None = no crop.

    Cropping before FFmpeg scales skips scaling the discarded sides; it matches scaling first and
    cropping after up to a sub-pixel shift of the crop window.
    """
    if mode != "center_crop" or h == w:
        return None
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def _swscale_size(h: int, w: int, size: int, mode: str) -> tuple[int, int]:
    """(h, w) to let FFmpeg scale to, so the numpy resize in resize_crop_normalise is a no-op."""
    if mode == "resize":
        return size, size
    s = size / (min(h, w) if mode == "center_crop" else max(h, w))
    out = max(1, round(h * s)), max(1, round(w * s))
    return (max(size, out[0]), max(size, out[1])) if mode == "center_crop" else out


def _fits(h: int, w: int, size: int, mode: str) -> bool:
    """Whether [h, w] frames only need a centre crop (FFmpeg already scaled them)."""
    return (mode == "center_crop" and min(h, w) == size) or (mode == "resize" and (h, w) == (size, size))


def crop_normalise(frames: np.ndarray, size: int, mean, std, mode: str,
                   out: np.ndarray | None = None) -> np.ndarray:
    """video.resize_crop_normalise, with a fast path when FFmpeg already scaled the frames.

    Cropping the uint8 frames first and normalising row-wise in place is ~3-10x faster than
    float-converting full frames and broadcasting per channel; the result equals
    ``resize_crop_normalise`` up to float rounding (x * 1/(255 std) - mean/std).
    """
    n, h, w, _ = frames.shape
    if out is None:
        out = np.empty((n, size, size, 3), np.float32)
    if not _fits(h, w, size, mode):
        out[...] = video_lib.resize_crop_normalise(frames, size, mean, std, mode)
        return out
    top, left = (h - size) // 2, (w - size) // 2
    std = np.asarray(std, np.float32)
    # Row-shaped [size * 3] factors: numpy's inner loop then runs over whole rows, not over 3
    # channels, which is several times faster than broadcasting a [3] vector.
    scale = np.tile(1.0 / (255.0 * std), size).astype(np.float32)
    bias = np.tile(-np.asarray(mean, np.float32) / std, size).astype(np.float32)
    rows = out.reshape(n, size, size * 3)  # a view: `out` is written in place
    # (width, channel) of a crop are contiguous, so this reshape is a view too: no copy of the crop.
    src = frames[:, top:top + size, left:left + size].reshape(n, size, size * 3)
    np.multiply(src, scale, out=rows, casting="unsafe")  # uint8 -> float32 inside the ufunc
    rows += bias
    return out


def resize_crop_uint8(frames: np.ndarray, size: int, mean, mode: str,
                      out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3]: video.resize_crop_normalise's geometry, not normalised.

    Normalising the result on the device with (mean, std) equals ``resize_crop_normalise`` up to
    rounding to whole grey levels (|error| <= 0.5 / 255 / std). "pad" fills with the mean colour, which
    normalises to 0 as in the float path. Frames FFmpeg already scaled are only cropped (one copy).
    """
    n, h, w, _ = frames.shape
    if out is None:
        out = np.empty((n, size, size, 3), np.uint8)
    if _fits(h, w, size, mode):
        top, left = (h - size) // 2, (w - size) // 2
        out[...] = frames[:, top:top + size, left:left + size]
        return out
    # With std = 1/255 the float path yields x - 255 * mean (pad: 0); adding 255 * mean back gives
    # resized grey levels with the pad at the mean colour.
    mean255 = 255.0 * np.asarray(mean, np.float32)
    x = video_lib.resize_crop_normalise(frames, size, mean, (1.0 / 255.0,) * 3, mode) + mean255
    np.clip(np.rint(x), 0, 255, out=x)
    out[...] = x
    return out


def fill_frames(frames: np.ndarray, cfg, out: np.ndarray) -> None:
    """Writes frames into ``out`` in the batch's pixel format (uint8 cropped, or float32 normalised)."""
    if out.dtype == np.uint8:
        resize_crop_uint8(frames, cfg.image_size, cfg.image_mean, cfg.resize_mode, out=out)
    else:
        crop_normalise(frames, cfg.image_size, cfg.image_mean, cfg.image_std, cfg.resize_mode, out=out)


def frame_indices(num_frames_in_clip: int, fps: float, cfg, first: int = 0,
                  last: int | None = None) -> np.ndarray:
    """Indices to decode: ``cfg.num_frames`` uniform ones, or every 1/``sample_fps`` s capped."""
    last = num_frames_in_clip if last is None else last
    if cfg.sampling == "uniform":
        return video_lib.sample_frame_indices(first, last, num_frames=cfg.num_frames)
    if cfg.sampling == "fps":
        return video_lib.sample_frame_indices(first, last, fps=cfg.sample_fps, max_frames=cfg.num_frames,
                                              video_fps=fps)
    raise ValueError(f"config.data.sampling must be 'uniform' or 'fps', got {cfg.sampling!r}")


PIXEL_DTYPES = {"uint8": np.uint8, "float32": np.float32}


def pixel_dtype(cfg) -> type:
    """numpy dtype of batch pixels from ``cfg.pixel_dtype`` (uint8: normalised on the device)."""
    name = cfg.get("pixel_dtype", "uint8") if hasattr(cfg, "get") else getattr(cfg, "pixel_dtype", "uint8")
    if name not in PIXEL_DTYPES:
        raise ValueError(f"config.data.pixel_dtype={name!r}: expected 'uint8' (the tower normalises on the "
                         f"device) or 'float32' (normalised on the host)")
    return PIXEL_DTYPES[name]


def load_clip(src, cfg, *, start: float | None = None, end: float | None = None,
              stored: dict | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames of a clip, tower-ready: [F, S, S, 3] and frame mask int32 [F].

    Pixels are uint8 resized/cropped to the tower's size (``cfg.pixel_dtype="uint8"``, the default:
    the model normalises on the device) or float32 normalised with ``cfg.image_mean/std``.
    src: a path or mp4 bytes; or ``stored`` = a record view ``{"frames": uint8 [n,H,W,3]}``.
    start/end: seconds within the video (None: the whole video). Frames beyond a short fps-sampled
    clip are zero with frame_mask 0, so shapes stay static. ``out``: [F, S, S, 3] to write into (a
    batch slot; its dtype picks the format): decoded frames are cropped straight into it, with no
    intermediate clip array. Raises VideoError.
    """
    size, mode = cfg.image_size, cfg.resize_mode
    if out is None:
        out = np.empty((cfg.num_frames, size, size, 3), pixel_dtype(cfg))
    if stored is not None and "frames" in stored:
        frames_all = np.asarray(stored["frames"])
        fps = float(stored.get("fps", 30.0))
        if frames_all.shape[0] == 0:
            raise video_lib.VideoError(str(src), "empty_video", "record holds no frames")
        idx = frame_indices(frames_all.shape[0], fps, cfg)[: cfg.num_frames]
        fill_frames(frames_all[idx], cfg, out[:len(idx)])
    else:
        known = stored or {}
        if "num_frames" in known and "height" in known:  # written by build_records: no probe needed
            info = video_lib.VideoInfo(int(known["num_frames"]), float(known["fps"]), int(known["width"]),
                                       int(known["height"]), int(known["num_frames"]) / float(known["fps"]))
        else:
            info = video_lib.probe(src)
        if info.num_frames <= 0:
            raise video_lib.VideoError(str(src), "empty_video", "no frames")
        first = 0 if start is None else max(0, int(start * info.fps))
        last = info.num_frames if end is None else min(info.num_frames, int(np.ceil(end * info.fps)))
        if first >= info.num_frames:
            raise video_lib.VideoError(str(src), "narration_outside_video",
                                       f"clip start {start} s is past the video end ({info.duration:.2f} s)")
        idx = frame_indices(info.num_frames, info.fps, cfg, first, max(last, first + 1))[: cfg.num_frames]

        def write(pos: np.ndarray, rgb: np.ndarray) -> None:
            # The first position gets the frame (crop/normalise once); repeats are plain copies.
            fill_frames(rgb[None], cfg, out[pos[0]:pos[0] + 1])
            out[pos[1:]] = out[pos[0]]

        crop = _source_crop(info.height, info.width, mode)
        scaled = (size, size) if crop is not None else _swscale_size(info.height, info.width, size, mode)
        video_lib.decode_into(src, idx, write, size=scaled, crop=crop)
    n = len(idx)
    out[n:] = 0
    mask = np.zeros((cfg.num_frames,), np.int32)
    mask[:n] = 1
    return out, mask


# --- batching -----------------------------------------------------------------------------------
class BatchTransform:
    """list of inputs -> one static batch, each example written straight into its slot.

    ``fill(item, rng, slot)`` writes one example into ``slot`` (dict of per-example views of the
    batch arrays) and returns None, or returns a skip marker; a skipped or missing example leaves
    an all-zero slot (example_mask 0), so batch count and shapes never depend on the data. Decoding
    into the batch saves a ~20 MB copy per clip, and batches are built in parallel by Grain's
    threads/workers. Picklable (runs in Grain workers).
    """

    def __init__(self, fill: Callable, spec: dict[str, tuple[tuple[int, ...], Any]], batch_size: int):
        self.fill, self.spec, self.batch_size = fill, spec, int(batch_size)

    def __call__(self, items: Sequence[Any], rng: np.random.Generator) -> dict[str, Any]:
        batch = {k: np.empty((self.batch_size, *shape), dtype) for k, (shape, dtype) in self.spec.items()}
        skips = []
        for i in range(self.batch_size):
            slot = {k: v[i, ...] for k, v in batch.items()}  # views, 0-d for example_mask
            result = self.fill(items[i], rng, slot) if i < len(items) else None
            if i >= len(items) or is_skip(result):
                for v in slot.values():
                    v[...] = 0
                if "labels" in slot:  # a loss that ignores example_mask still trains nothing here
                    slot["labels"][...] = IGNORE_INDEX
                if i < len(items):
                    skips.append(result[SKIP])
            else:
                slot["example_mask"][...] = 1
        batch[SKIPS_KEY] = skips
        batch[SEEN_KEY] = len(items)
        return batch


class _TallyIterator(grain.DatasetIterator):
    def __init__(self, parent, max_fraction: float, min_seen: int, initial: SkipCounter | None):
        super().__init__(parent)
        self._max_fraction = max_fraction
        self._min_seen = min_seen
        self._initial = initial.to_json() if initial is not None else SkipCounter().to_json()
        self.skips = SkipCounter.from_json(self._initial)

    def __next__(self):
        try:
            batch = next(self._parent)
        except StopIteration:
            logging.info("input pipeline: %s", self.skips.report())
            self.skips.check(self._max_fraction)
            raise
        batch = dict(batch)
        for reason, path, detail in batch.pop(SKIPS_KEY, []):
            self.skips.skip(reason, path, detail)
        self.skips.seen(int(batch.pop(SEEN_KEY, 0)))
        if self.skips.num_seen >= self._min_seen:
            self.skips.check(self._max_fraction)
        return batch

    def get_state(self):
        return {"parent": self._parent.get_state(), "skips": self.skips.to_json()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self.skips = SkipCounter.from_json(state["skips"])


class SkipTallyDataset(grain.IterDataset):
    """Main-process stage: counts skips per reason (iterator ``.skips``), checks the fraction."""

    def __init__(self, parent: grain.IterDataset, max_fraction: float, min_seen: int = 100,
                 initial: SkipCounter | None = None):
        super().__init__(parent)
        self._max_fraction = max_fraction
        self._min_seen = min_seen
        self._initial = initial

    def __iter__(self):
        return _TallyIterator(self._parent.__iter__(), self._max_fraction, self._min_seen, self._initial)


def find_skips(iterator) -> SkipCounter | None:
    """The SkipCounter of a pipeline iterator, also under later stages (e.g. ``ds.map(...)``)."""
    todo = [iterator]
    while todo:
        it = todo.pop()
        if isinstance(getattr(it, "skips", None), SkipCounter):
            return it.skips
        todo.extend(getattr(it, "_parents", ()))
    return None


def skip_metrics(iterator) -> dict[str, float]:
    """Skip metrics of a pipeline iterator (``skipped/<reason>``, ``skipped/fraction``, ...)."""
    skips = find_skips(iterator)
    return skips.metrics() if skips is not None else {}


def state_to_json(state: Any) -> str:
    """JSON text of an iterator state (for tests and plain-file checkpoints)."""
    return json.dumps(state, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o))
