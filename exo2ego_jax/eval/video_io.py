"""Frames of a `VideoRef` for model adapters: mp4 windows, frame folders, preloaded frames.

Adapters call `load_video(ref, num_frames=...)` (Exo2Ego: 16 frames) or
`load_video(ref, fps=1, max_frames=180)` (Ego2ExoVLM evaluation sampling) and then apply their
tower's resize/normalise (`data.video.resize_crop_normalise`).
"""
from __future__ import annotations

import os
import re

import av
import numpy as np

from exo2ego_jax.data import video as video_lib
from exo2ego_jax.eval.records import VideoRef

# Seconds <-> frame numbers of frame folders (EPIC-KITCHENS `rgb_frames/<vid>/frame_%010d.jpg`,
# numbered from 1). The EgoPlan loader converts frame numbers to seconds with the same 30, so a
# folder window maps back to the annotated frame numbers exactly.
FOLDER_FPS = 30.0
_IMAGE_EXT = (".jpg", ".jpeg", ".png")
_FRAME_NUMBER = re.compile(r"(\d+)\.[A-Za-z]+$")


def _window(ref: VideoRef, num_available: int, fps: float) -> tuple[int, int]:
    start = 0 if ref.start is None else int(round(ref.start * fps))
    end = num_available if ref.end is None else int(round(ref.end * fps))
    # A window may run past the file (EgoMCQ clips crossing a 600-s chunk boundary): clamp.
    start = min(max(start, 0), num_available - 1)
    return start, min(max(end, start + 1), num_available)


def frame_number(name: str) -> int:
    """'frame_0000000036.jpg' -> 36 (the number before the extension)."""
    m = _FRAME_NUMBER.search(name)
    if m is None:
        raise ValueError(f"frame file {name!r} has no number before its extension (expected frame_%010d.jpg)")
    return int(m.group(1))


def folder_window(names: list[str], ref: VideoRef, fps: float = FOLDER_FPS) -> tuple[int, int]:
    """[start, end) positions in `names` (sorted by frame number) of the window of `ref`.

    Frame files carry their annotation frame numbers (EPIC-KITCHENS numbers from 1), so the window
    is chosen by number, not by position: [round(start * fps), round(end * fps)] inclusive, as
    EgoPlan's evaluation reads `frame_{n:010d}.jpg` for the annotated n (1.2 s - 25.33 s ->
    frame_0000000036.jpg .. frame_0000000760.jpg; the last one is the current observation).
    A window starting before the first file (0 s) starts at the first file.
    """
    numbers = [frame_number(n) for n in names]
    lo = numbers[0] if ref.start is None else int(round(ref.start * fps))
    hi = numbers[-1] if ref.end is None else int(round(ref.end * fps))
    start = int(np.searchsorted(numbers, lo, side="left"))
    end = int(np.searchsorted(numbers, hi, side="right"))
    start = min(start, len(numbers) - 1)  # a window past the last file keeps the last frame
    return start, max(end, start + 1)


def _read_image(path: str) -> np.ndarray:
    with av.open(path) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def load_video(ref: VideoRef, *, num_frames: int | None = None, fps: float | None = None,
               max_frames: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [F, H, W, 3] frames of `ref`'s window, sampled like `data.video.sample_frame_indices`.

    `ref.frames` (preloaded, frame i at i / `FOLDER_FPS` s) wins over `ref.path`; a directory path is
    a folder of numbered images (window by frame number, `folder_window`); anything else is decoded
    with PyAV. `size` = (height, width) rescales (mp4 only: inside FFmpeg; preloaded/folder frames
    are returned as stored).
    """
    if ref.frames is not None or os.path.isdir(ref.path):
        if ref.frames is not None:
            frames_or_files = np.asarray(ref.frames)
            start, end = _window(ref, len(frames_or_files), FOLDER_FPS)
        else:
            frames_or_files = sorted((f for f in os.listdir(ref.path) if f.lower().endswith(_IMAGE_EXT)),
                                     key=frame_number)
            if not frames_or_files:
                raise video_lib.VideoError(ref.path, "missing_video", "frame folder has no .jpg/.png images")
            start, end = folder_window(frames_or_files, ref)
        idx = video_lib.sample_frame_indices(start, end, num_frames=num_frames, fps=fps, max_frames=max_frames,
                                             video_fps=FOLDER_FPS)
        if ref.frames is not None:
            return frames_or_files[idx]
        return np.stack([_read_image(os.path.join(ref.path, frames_or_files[i])) for i in idx])
    if not os.path.exists(ref.path):
        raise video_lib.VideoError(ref.path, "missing_video", "check the benchmark's eval.paths.<name>.video_dir")
    info = video_lib.probe(ref.path)
    start, end = _window(ref, info.num_frames, info.fps)
    idx = video_lib.sample_frame_indices(start, end, num_frames=num_frames, fps=fps, max_frames=max_frames,
                                         video_fps=info.fps)
    return video_lib.decode_frames(ref.path, idx, size=size)
