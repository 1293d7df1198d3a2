"""PyAV decoding (seek + forward decode), bad-file reasons, frame sampling, resize/crop/normalise."""
import io

import numpy as np
import pytest

from exo2ego_jax.data import video

N, H, W = 48, 64, 96


def _frames():
    """Frame i is a flat grey of level 4*i (survives H.264 to within a few levels) plus a gradient."""
    f = np.zeros((N, H, W, 3), np.uint8)
    f[:] = (np.arange(N) * 4 + 20)[:, None, None, None]
    return f


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    video.encode_mp4(_frames(), path, fps=30, crf=18, gop=8)
    return path


def test_probe(mp4):
    info = video.probe(mp4)
    assert (info.num_frames, info.width, info.height) == (N, W, H)
    assert info.fps == pytest.approx(30.0) and info.duration == pytest.approx(N / 30, abs=0.05)


def test_decode_seek_order_repeats_size_bytes(mp4):
    idx = [40, 3, 17, 17, 47, 0]
    out = video.decode_frames(mp4, idx)
    assert out.shape == (6, H, W, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[:, H // 2, W // 2, 0], np.array(idx) * 4 + 20, atol=3)
    small = video.decode_frames(open(mp4, "rb").read(), [5, 6], size=(32, 48))
    assert small.shape == (2, 32, 48, 3)
    np.testing.assert_allclose(small[:, 16, 24, 0], [40, 44], atol=3)
    # Single-threaded decoder and colour conversion (build_arrays' tiny videos): the same bytes.
    np.testing.assert_array_equal(video.decode_frames(mp4, idx, threads="NONE"), out)
    np.testing.assert_array_equal(video.decode_frames(mp4, [5, 6], size=(32, 48), threads="NONE"), small)


def test_decode_into_crops_before_scaling(tmp_path):
    """crop + scale in one FFmpeg pass = decode, scale, then crop (the pipeline's centre crop)."""
    x = np.arange(96)
    f = np.zeros((4, 64, 96, 3), np.uint8)
    f[..., 0] = (x * 2 + 30)[None, None, :]  # a horizontal ramp shows where the crop window sits
    f[..., 1] = (np.arange(4) * 40 + 20)[:, None, None]
    path = str(tmp_path / "wide.mp4")
    video.encode_mp4(f, path, fps=30, crf=10, gop=2)
    got = np.zeros((3, 32, 32, 3), np.uint8)

    def write(pos, rgb):
        got[pos] = rgb

    video.decode_into(path, [3, 1, 1], write, size=(32, 32), crop=(0, 16, 64, 64))
    ref = video.resize(video.decode_frames(path, [3, 1, 1]), 32, 48)[:, :, 8:40]
    np.testing.assert_allclose(got, ref, atol=6)
    assert abs(int(got[0, 16, 0, 0]) - (16 * 2 + 30)) < 6  # left edge of the window is source column 16
    with pytest.raises(video.VideoError, match="does not fit"):
        video.decode_into(path, [0], write, size=(32, 32), crop=(0, 40, 64, 64))


def test_encode_to_file_object_is_deterministic():
    a, b = io.BytesIO(), io.BytesIO()
    video.encode_mp4(_frames()[:8], a)
    video.encode_mp4(_frames()[:8], b)
    assert a.getvalue() == b.getvalue() and len(a.getvalue()) > 0


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "truncated", "beyond_end"])
def test_bad_videos_raise_with_reason(mp4, tmp_path, case):
    data = open(mp4, "rb").read()
    path = str(tmp_path / f"{case}.mp4")
    idx = [0, N - 1]
    expected = {"missing": "missing_video", "empty": "empty_video", "corrupt": "corrupt_video",
                "truncated": "truncated_video", "beyond_end": "truncated_video"}[case]
    if case == "empty":
        open(path, "wb").close()
    elif case == "corrupt":
        open(path, "wb").write(np.random.default_rng(0).bytes(len(data)))
    elif case == "truncated":
        open(path, "wb").write(data[: len(data) * 2 // 3])
    elif case == "beyond_end":
        path, idx = mp4, [N + 5]
    with pytest.raises(video.VideoError) as e:
        video.decode_frames(path, idx)
    assert e.value.reason == expected and e.value.path == path


def test_random_bytes_are_always_corrupt(tmp_path):
    # FFmpeg's probe takes some garbage for a raw format with a frameless stream (once seen as
    # "empty_video" in CI): garbage of any content must read as corrupt.
    path = str(tmp_path / "garbage.mp4")
    for seed in range(60):
        open(path, "wb").write(np.random.default_rng(seed).bytes(4096 + 97 * seed))
        with pytest.raises(video.VideoError) as e:
            video.decode_frames(path, [0])
        assert e.value.reason == "corrupt_video", (seed, e.value)


def test_truncated_without_faststart_index(tmp_path):
    path = str(tmp_path / "tail_index.mp4")
    video.encode_mp4(_frames()[:16], path, faststart=False)  # index at the end: cut files lose it
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(video.VideoError) as e:
        video.probe(path)
    assert e.value.reason == "truncated_video"


def test_sample_frame_indices():
    np.testing.assert_array_equal(video.sample_frame_indices(0, 8, num_frames=4), [1, 3, 5, 7])
    np.testing.assert_array_equal(video.sample_frame_indices(10, 12, num_frames=4), [10, 10, 11, 11])
    np.testing.assert_array_equal(video.sample_frame_indices(0, 90, fps=1.0, video_fps=30.0), [0, 30, 60])
    capped = video.sample_frame_indices(0, 300, fps=10.0, max_frames=5)
    assert len(capped) == 5 and np.all(np.diff(capped) > 0) and capped[-1] < 300
    np.testing.assert_array_equal(video.sample_frame_indices(5, 5, num_frames=2), [5, 5])
    np.testing.assert_array_equal(video.sample_frame_indices(0, 4), [0, 1, 2, 3])
    with pytest.raises(ValueError):
        video.sample_frame_indices(0, 10, num_frames=2, fps=1.0)


def test_resize_crop_normalise_modes():
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, :12] = 255  # a white band on the left
    crop = video.resize_crop_normalise(frames, 20, mean, std, mode="center_crop")
    assert crop.shape == (2, 20, 20, 3) and crop.dtype == np.float32
    np.testing.assert_allclose(crop, -2.0, atol=1e-5)  # centre crop sees only the black middle
    full = video.resize_crop_normalise(frames, 20, mean, std, mode="resize")
    np.testing.assert_allclose(full[:, :, :2], 2.0, atol=1e-5)
    np.testing.assert_allclose(full[:, :, 5:], -2.0, atol=1e-5)
    pad = video.resize_crop_normalise(frames, 20, mean, std, mode="pad")
    np.testing.assert_allclose(pad[:, :5], 0.0, atol=1e-5)  # padding is the mean colour -> 0
    np.testing.assert_allclose(pad[:, 5:15, 0], 2.0, atol=1e-5)
    np.testing.assert_allclose(pad[:, 5:15, -1], -2.0, atol=1e-5)
    # Antialiased downscale of a 1-pixel checkerboard averages to grey instead of aliasing.
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[None, ..., None].repeat(3, -1)
    grey = video.resize_crop_normalise(checker, 16, (0, 0, 0), (1, 1, 1), mode="resize")
    np.testing.assert_allclose(grey, 0.5, atol=0.02)
    with pytest.raises(ValueError, match="mode"):
        video.resize_crop_normalise(frames, 20, mean, std, mode="stretch")


def test_colours_survive_encode_decode(tmp_path):
    colours = np.array([[205, 40, 40], [40, 160, 60], [40, 80, 210], [230, 200, 40], [255, 255, 255], [0, 0, 0]],
                       np.uint8)
    frames = np.repeat(colours[:, None, None, :], 32, axis=1).repeat(32, axis=2)  # one flat colour per frame
    path = str(tmp_path / "colours.mp4")
    video.encode_mp4(frames, path, crf=18)
    out = video.decode_frames(path, range(len(colours)))
    np.testing.assert_allclose(out[:, 16, 16].astype(int), colours.astype(int), atol=6)


def test_rgb_to_yuv420p_of_a_video_equals_frame_by_frame():
    """encode_mp4 converts a whole video at once: the same bytes as converting each frame."""
    rng = np.random.default_rng(1)
    for shape in ((6, 64, 64, 3), (3, 90, 160, 3), (2, 30, 46, 3)):
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
        y, u, v = video.rgb_to_yuv420p(frames)
        for i, f in enumerate(frames):
            for got, want in zip((y[i], u[i], v[i]), video.rgb_to_yuv420p(f)):
                np.testing.assert_array_equal(got, want)
