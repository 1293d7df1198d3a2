"""Frames of a `VideoRef` for model adapters: mp4 windows, frame folders, preloaded frames.

Adapters call `load_video(ref, num_frames=...)` (Exo2Ego: 16 frames) or
`load_video(ref, fps=1, max_frames=180)` (Ego2ExoVLM evaluation sampling) and then apply their
tower's resize/normalise (`data.video.resize_crop_normalise`).
"""
from __future__ import annotations

import os

import av
import numpy as np

from exo2ego_jax.data import video as video_lib
from exo2ego_jax.eval.records import VideoRef

# Seconds <-> frame numbers of frame folders (EPIC-KITCHENS `rgb_frames/<vid>/frame_%010d.jpg`,
# numbered from 1). The EgoPlan loader converts frame numbers to seconds with the same 30, so a
# folder window maps back to the annotated frame numbers exactly.
FOLDER_FPS = 30.0
_IMAGE_EXT = (".jpg", ".jpeg", ".png")


def _window(ref: VideoRef, num_available: int, fps: float) -> tuple[int, int]:
    start = 0 if ref.start is None else int(round(ref.start * fps))
    end = num_available if ref.end is None else int(round(ref.end * fps))
    # A window may run past the file (EgoMCQ clips crossing a 600-s chunk boundary): clamp.
    start = min(max(start, 0), num_available - 1)
    return start, min(max(end, start + 1), num_available)


def _read_image(path: str) -> np.ndarray:
    with av.open(path) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def load_video(ref: VideoRef, *, num_frames: int | None = None, fps: float | None = None,
               max_frames: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [F, H, W, 3] frames of `ref`'s window, sampled like `data.video.sample_frame_indices`.

    `ref.frames` (preloaded, taken to be at `FOLDER_FPS`) wins over `ref.path`; a directory path is
    a folder of numbered images; anything else is decoded with PyAV. `size` = (height, width)
    rescales (mp4 only: inside FFmpeg; preloaded/folder frames are returned as stored).
    """
    if ref.frames is not None or os.path.isdir(ref.path):
        if ref.frames is not None:
            frames_or_files = np.asarray(ref.frames)
        else:
            frames_or_files = sorted(f for f in os.listdir(ref.path) if f.lower().endswith(_IMAGE_EXT))
            if not frames_or_files:
                raise video_lib.VideoError(ref.path, "missing_video", "frame folder has no .jpg/.png images")
        start, end = _window(ref, len(frames_or_files), FOLDER_FPS)
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
