"""`load_video` on real mp4 files, frame folders and preloaded frames (windows in seconds)."""
import os

import numpy as np
import pytest

from exo2ego_jax.data.video import VideoError, encode_mp4
from exo2ego_jax.eval.records import VideoRef
from exo2ego_jax.eval.video_io import load_video


def _frames(n=60, h=32, w=48):
    """Frame i is a flat grey of value 4*i (distinguishable after H.264)."""
    return np.broadcast_to((np.arange(n, dtype=np.uint8) * 4)[:, None, None, None], (n, h, w, 3)).copy()


def test_mp4_window_and_sampling(tmp_path):
    path = str(tmp_path / "v.mp4")
    encode_mp4(_frames(), path, fps=30, crf=10)
    clip = load_video(VideoRef(path, 1.0, 1.5), num_frames=3)  # frames 30..44 -> centres 32, 37, 42
    assert clip.shape == (3, 32, 48, 3) and clip.dtype == np.uint8
    np.testing.assert_allclose(clip[:, 16, 24, 0], [128, 148, 168], atol=6)
    whole = load_video(VideoRef(path), fps=1)  # one frame a second over 2 s
    assert whole.shape[0] == 2
    # A window past the end (chunk-crossing EgoMCQ clip) is clamped to the file.
    assert load_video(VideoRef(path, 1.9, 3.0), num_frames=2).shape[0] == 2
    assert load_video(VideoRef(path), num_frames=2, size=(16, 24)).shape == (2, 16, 24, 3)


def test_frame_folder_and_preloaded(tmp_path):
    folder = tmp_path / "P01_01"
    os.makedirs(folder)
    frames = _frames(12, 16, 16)
    # Frame folders hold images numbered from 1 (EPIC-KITCHENS frame_%010d.jpg); PNG keeps values exact.
    import av
    for i, f in enumerate(frames, 1):
        with av.open(str(folder / f"frame_{i:010d}.png"), "w", format="image2") as c:
            s = c.add_stream("png", rate=1)
            s.width, s.height, s.pix_fmt = 16, 16, "rgb24"
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
            c.mux(s.encode())
    got = load_video(VideoRef(str(folder), 0.1, 0.3), num_frames=2)  # frames [3, 9) -> 4 and 7
    assert got[:, 0, 0, 0].tolist() == [16, 28]
    pre = load_video(VideoRef("mem", frames=frames), num_frames=4)
    assert pre[:, 0, 0, 0].tolist() == [4, 16, 28, 40]


def test_missing_video_names_the_path(tmp_path):
    with pytest.raises(VideoError, match="missing_video: .*nope.mp4"):
        load_video(VideoRef(str(tmp_path / "nope.mp4")), num_frames=2)
