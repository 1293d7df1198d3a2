"""`load_video` on real mp4 files, frame folders and preloaded frames (windows in seconds)."""
import json
import os

import numpy as np
import pytest

from exo2ego_jax.data.video import VideoError, encode_mp4
from exo2ego_jax.eval.records import VideoRef
from exo2ego_jax.eval.loaders_mcq import load_egoplan
from exo2ego_jax.eval.video_io import folder_window, load_video


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
    # 0.1-0.3 s = frame numbers 3..9 inclusive (files by number: positions 2..8); 2 centres of 7
    # frames -> positions 3 and 7 = files 4 and 8, which hold frames[3] = 12 and frames[7] = 28.
    got = load_video(VideoRef(str(folder), 0.1, 0.3), num_frames=2)
    assert got[:, 0, 0, 0].tolist() == [12, 28]
    # A window at frame 1 (0 s or 1/30 s) starts at the first file: frames 1..3 = frames[0..2].
    for start in (0.0, 1 / 30):
        assert load_video(VideoRef(str(folder), start, 0.1), num_frames=3)[:, 0, 0, 0].tolist() == [0, 4, 8]
    pre = load_video(VideoRef("mem", frames=frames), num_frames=4)
    assert pre[:, 0, 0, 0].tolist() == [4, 16, 28, 40]


def test_missing_video_names_the_path(tmp_path):
    with pytest.raises(VideoError, match="missing_video: .*nope.mp4"):
        load_video(VideoRef(str(tmp_path / "nope.mp4")), num_frames=2)


def _egoplan_epic(start_frame, current_frame):
    return {"sample_id": 7, "video_source": "EpicKitchens", "video_id": "P01_01", "task_goal": "make tea",
            "question": "What next?", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d",
            "golden_choice_idx": "B", "answer": "b", "current_observation_frame": current_frame,
            "task_progress_metadata": [{"narration_text": "x", "start_frame": start_frame, "stop_frame": 90},
                                       {"narration_text": "y", "start_frame": 120, "stop_frame": 400}]}


def test_egoplan_epic_window_reads_the_annotated_frame_files(tmp_path):
    """EgoPlan's EPIC windows read frame_{n:010d}.jpg for the annotated n (numbered from 1)."""
    folder = tmp_path / "P01" / "rgb_frames" / "P01_01"
    os.makedirs(folder)
    for n in range(1, 801):
        (folder / f"frame_{n:010d}.jpg").touch()
    names = sorted(os.listdir(folder))
    ann = tmp_path / "egoplan.json"
    ann.write_text(json.dumps([_egoplan_epic(36, 760), _egoplan_epic(1, 45), _egoplan_epic(0, 30)]))
    late, first, zero = load_egoplan(str(ann), str(tmp_path))
    assert late.video.path == str(folder)
    assert (late.video.start, round(late.video.end, 2)) == (1.2, 25.33)
    start, end = folder_window(names, late.video)
    assert (names[start], names[end - 1]) == ("frame_0000000036.jpg", "frame_0000000760.jpg")
    start, end = folder_window(names, first.video)
    assert (names[start], names[end - 1]) == ("frame_0000000001.jpg", "frame_0000000045.jpg")
    start, end = folder_window(names, zero.video)  # frame 0 does not exist: the window starts at file 1
    assert (names[start], names[end - 1]) == ("frame_0000000001.jpg", "frame_0000000030.jpg")
    # Numbers, not positions, choose: frame 9 (0.3 s) is position 0 when the folder starts at 9.
    assert folder_window(["frame_9.jpg", "frame_10.jpg"], VideoRef("x", 0.3, 0.3)) == (0, 1)
    with pytest.raises(ValueError, match="no number"):
        folder_window(["cover.jpg"], VideoRef("x"))
