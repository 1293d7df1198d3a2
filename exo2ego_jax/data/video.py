"""Video I/O in numpy: PyAV decoding with seeking, frame sampling, resize/crop/normalise, mp4 encoding.

transformers' video processors need torchvision (not installable here), so everything a video tower
needs before its first matmul lives here, in numpy. Decoding seeks to the keyframe before the first
wanted frame and decodes forward only as far as the last wanted frame; ``decode_into`` lets FFmpeg
crop, scale and convert to RGB in one swscale pass and hands each frame to the caller without copies
(the input pipeline writes it straight into its batch).
"""
from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import BinaryIO

import av
import numpy as np
from av.video.reformatter import VideoReformatter

PathOrBytes = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class VideoError(Exception):
    """A video that cannot be used; `reason` is a SkipCounter reason, `path` names the file."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {self.path}" + (f" ({detail})" if detail else ""))


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds


def _name(src: PathOrBytes) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"<{type(src).__name__} video>"


def _has_mp4_header(src: PathOrBytes) -> bool:
    try:
        if isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                head = f.read(12)
        elif isinstance(src, (bytes, bytearray, memoryview)):
            head = bytes(src[:12])
        else:
            return False
    except OSError:
        return False
    return head[4:8] == b"ftyp"


def _open(src: PathOrBytes):
    """Opens a container, mapping every failure onto a VideoError reason."""
    name = _name(src)
    if isinstance(src, (str, os.PathLike)):
        if not os.path.exists(src):
            raise VideoError(name, "missing_video", "file does not exist")
        if os.path.getsize(src) == 0:
            raise VideoError(name, "empty_video", "file has 0 bytes")
        target = os.fspath(src)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        if len(src) == 0:
            raise VideoError(name, "empty_video", "0 bytes")
        target = io.BytesIO(bytes(src))
    else:
        target = src
    try:
        container = av.open(target, mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as e:
        # A valid mp4 header ("ftyp" box) whose index cannot be read is a cut-off download.
        reason = "truncated_video" if _has_mp4_header(src) else "corrupt_video"
        raise VideoError(name, reason, f"cannot open: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoError(name, "corrupt_video", "no video stream")
    return container


def _info(container, name: str, src: PathOrBytes | None = None) -> VideoInfo:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 30.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    num_frames = int(stream.frames) or int(round(duration * fps))
    if num_frames <= 0:
        # FFmpeg's probe guesses some raw format for arbitrary bytes and reports a frameless
        # stream: only a real MP4 without frames is "empty"; anything else is garbage.
        if src is not None and not _has_mp4_header(src):
            raise VideoError(name, "corrupt_video", "no frames and no MP4 header: not a video file")
        raise VideoError(name, "empty_video", "stream has no frames")
    return VideoInfo(num_frames=num_frames, fps=fps, width=int(stream.codec_context.width),
                     height=int(stream.codec_context.height), duration=duration or num_frames / fps)


def _count_packets(src: PathOrBytes) -> int:
    """Video packets that can be read with data (demux only, no decoding)."""
    if not isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        return 0  # a consumed file object cannot be re-read
    count = 0
    try:
        with av.open(os.fspath(src) if isinstance(src, (str, os.PathLike)) else io.BytesIO(bytes(src))) as c:
            for packet in c.demux(c.streams.video[0]):
                if packet.size:
                    count += 1
    except (av.error.FFmpegError, OSError, ValueError):
        pass
    return count


def probe(src: PathOrBytes) -> VideoInfo:
    """Frame count, fps, size and duration from the container header (no decoding)."""
    container = _open(src)
    try:
        return _info(container, _name(src), src)
    finally:
        container.close()


def _crop_scale_graph(stream, crop: tuple[int, int, int, int], size: tuple[int, int]):
    """FFmpeg filter graph: crop (top, left, height, width) -> one swscale call to rgb24 at ``size``."""
    top, left, height, width = crop
    graph = av.filter.Graph()
    chain = [graph.add_buffer(template=stream), graph.add("crop", f"{width}:{height}:{left}:{top}"),
             graph.add("scale", f"{int(size[1])}:{int(size[0])}:flags=bilinear"), graph.add("format", "rgb24"),
             graph.add("buffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def decode_into(src: PathOrBytes, frame_indices: Sequence[int],
                write: Callable[[np.ndarray, np.ndarray], None], *,
                size: tuple[int, int] | None = None,
                crop: tuple[int, int, int, int] | None = None, threads: str = "AUTO") -> VideoInfo:
    """Decodes the given frames and hands each one to ``write(positions, rgb)``, no copies made.

    ``rgb`` is uint8 [H, W, 3] (scaled to ``size`` = (height, width) by the same swscale call that
    converts YUV to RGB), a view of FFmpeg's frame buffer; ``positions`` are the places in
    ``frame_indices`` that want this frame (repeats allowed). ``crop`` = (top, left, height, width) of
    the decoded frame to keep before scaling (needs ``size``): scaling only the centre crop of a wide
    frame saves a third of the scaling work. Decoding seeks to the keyframe before the first wanted
    frame and stops at the last one; the codec decodes with frame + slice threads (``threads``: FFmpeg's
    thread_type; "NONE" also makes the RGB conversion single-threaded: for small videos decoded many
    at a time, where waking threads per frame costs more than they save; the frames are the same).
    Raises VideoError (missing/empty/corrupt/truncated_video) when the frames cannot be produced.
    """
    if crop is not None and size is None:
        raise ValueError(f"decode_into({_name(src)}): crop={crop} needs an output size")
    name = _name(src)
    indices = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
    if indices.size == 0:
        raise ValueError(f"decode_frames({name}): frame_indices is empty; pass at least one index")
    if indices.min() < 0:
        raise ValueError(f"decode_frames({name}): negative frame index {int(indices.min())}")
    wanted = np.unique(indices)
    positions = {int(i): np.flatnonzero(indices == i) for i in wanted}
    container = _open(src)
    try:
        info = _info(container, name, src)
        stream = container.streams.video[0]
        stream.codec_context.thread_type = threads
        time_base = float(stream.time_base)
        start_pts = stream.start_time or 0
        first, last = int(wanted[0]), int(wanted[-1])
        if first > 0:
            # Seek to the keyframe at or before `first`; the decode loop skips forward from there.
            container.seek(start_pts + int(first / info.fps / time_base), stream=stream, backward=True)
        # One reformatter (or graph) for the whole clip: its swscale context is built once, not per frame.
        if crop is not None:
            top, left, height, width = crop
            if top < 0 or left < 0 or top + height > info.height or left + width > info.width:
                # Crops come from stored metadata (records.json sizes): a mismatch is bad input.
                raise VideoError(name, "corrupt_video", f"crop {crop} (top, left, height, width) does not fit "
                                 f"in the {info.height}x{info.width} frames")
            try:
                graph = _crop_scale_graph(stream, crop, size)
            except (av.error.FFmpegError, ValueError) as e:
                raise VideoError(name, "corrupt_video", f"cannot crop/scale this stream: {e}") from e

            def to_rgb(frame):
                graph.push(frame)
                return graph.pull().to_ndarray()
        else:
            reformatter = VideoReformatter()
            kwargs = {"format": "rgb24", "threads": 1 if threads == "NONE" else None}
            if size is not None:
                kwargs.update(height=int(size[0]), width=int(size[1]))

            def to_rgb(frame):
                return reformatter.reformat(frame, **kwargs).to_ndarray()
        done = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                idx = int(round((frame.pts - start_pts) * time_base * info.fps))
                pos = positions.pop(idx, None)
                if pos is not None:
                    write(pos, to_rgb(frame))
                    done += 1
                if idx >= last:
                    break
        except (av.error.FFmpegError, OSError) as e:
            # Fewer readable packets than the index promises means the file was cut off.
            packets = _count_packets(src)
            reason = "truncated_video" if packets < info.num_frames else "corrupt_video"
            raise VideoError(name, reason, f"decoding failed after {done} wanted frames "
                             f"({packets}/{info.num_frames} packets readable): {e}") from e
        if positions:
            missing = sorted(positions)
            raise VideoError(name, "truncated_video", f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} not "
                             f"decodable; header says {info.num_frames} frames")
    finally:
        container.close()
    return info


def decode_frames(src: PathOrBytes, frame_indices: Sequence[int], *,
                  size: tuple[int, int] | None = None, threads: str = "AUTO") -> np.ndarray:
    """Decodes the given frames (any order, repeats allowed) as uint8 [N, H, W, 3] RGB.

    size: optional (height, width) to scale to inside FFmpeg's swscale (cheaper than numpy).
    threads: the decoder's thread_type (see `decode_into`).
    Raises VideoError (missing/empty/corrupt/truncated_video) when the frames cannot be produced.
    """
    n = int(np.asarray(frame_indices).size)
    out: list[np.ndarray] = []

    def write(pos: np.ndarray, rgb: np.ndarray) -> None:
        if not out:
            out.append(np.empty((n, *rgb.shape), np.uint8))
        out[0][pos] = rgb

    decode_into(src, frame_indices, write, size=size, threads=threads)
    return out[0]


def sample_frame_indices(start_frame: int, end_frame: int, *, num_frames: int | None = None,
                         fps: float | None = None, max_frames: int | None = None,
                         video_fps: float = 30.0) -> np.ndarray:
    """Frame indices in [start_frame, end_frame) (end exclusive).

    num_frames: N frames at the centres of N equal segments (repeats if the span is shorter).
    fps: frames every video_fps/fps frames; then at most max_frames, spread uniformly.
    Neither: every frame, capped by max_frames.
    """
    if num_frames is not None and fps is not None:
        raise ValueError("sample_frame_indices: pass num_frames or fps, not both")
    start, end = int(start_frame), int(end_frame)
    if end <= start:
        end = start + 1  # a zero-length span still yields its single frame
    span = end - start
    if num_frames is not None:
        if num_frames <= 0:
            raise ValueError(f"sample_frame_indices: num_frames must be > 0, got {num_frames}")
        return start + np.floor((np.arange(num_frames) + 0.5) * span / num_frames).astype(np.int64)
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"sample_frame_indices: fps must be > 0, got {fps}")
        step = float(video_fps) / float(fps)
        idx = start + np.floor(np.arange(0.0, span, step)).astype(np.int64)
    else:
        idx = np.arange(start, end, dtype=np.int64)
    if max_frames is not None and len(idx) > max_frames:
        idx = idx[np.floor((np.arange(max_frames) + 0.5) * len(idx) / max_frames).astype(np.int64)]
    return idx


def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] linear-interpolation weights, widened when shrinking (antialias, like PIL)."""
    scale = out_size / in_size
    support = max(1.0, 1.0 / scale)
    centres = (np.arange(out_size) + 0.5) / scale - 0.5
    x = np.arange(in_size)[None, :] - centres[:, None]
    w = np.clip(1.0 - np.abs(x) / support, 0.0, None)
    w_sum = w.sum(axis=1, keepdims=True)
    # Degenerate rows (no support inside the image) fall back to the nearest pixel.
    nearest = np.clip(np.round(centres).astype(int), 0, in_size - 1)
    w[w_sum[:, 0] == 0, nearest[w_sum[:, 0] == 0]] = 1.0
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of [N, H, W, C] -> float32 [N, height, width, C]."""
    frames = np.asarray(frames, dtype=np.float32)
    n, h, w, c = frames.shape
    if (h, w) == (height, width):
        return frames
    out = np.einsum("oh,nhwc->nowc", _resize_matrix(h, height), frames, optimize=True)
    return np.einsum("pw,nowc->nopc", _resize_matrix(w, width), out, optimize=True)


def resize_crop_normalise(frames: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float],
                          mode: str = "center_crop") -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, size, size, 3], (x/255 - mean) / std.

    mode: "center_crop" (shorter side to size, crop the centre), "resize" (stretch to a square),
    "pad" (longer side to size, pad with the mean colour, i.e. 0 after normalising).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"resize_crop_normalise: expected frames [N, H, W, 3], got shape {frames.shape}")
    _, h, w, _ = frames.shape
    mean = np.asarray(mean, np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(std, np.float32).reshape(1, 1, 1, 3)
    if mode == "resize":
        x = resize(frames, size, size)
    elif mode == "center_crop":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = resize(frames, nh, nw)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, top:top + size, left:left + size]
    elif mode == "pad":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        inner = resize(frames, nh, nw)
        x = np.broadcast_to(mean * 255.0, (frames.shape[0], size, size, 3)).copy()
        top, left = (size - nh) // 2, (size - nw) // 2
        x[:, top:top + nh, left:left + nw] = inner
    else:
        raise ValueError(f"resize_crop_normalise: mode must be 'center_crop', 'resize' or 'pad', got {mode!r}")
    return ((x / 255.0 - mean) / std).astype(np.float32)


def rgb_to_yuv420p(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 [..., H, W, 3] RGB -> Y [..., H, W], U, V [..., H/2, W/2] (BT.601 limited range, like swscale).

    A whole video converts in one call: the same float32 operations per pixel as one frame at a
    time (the matrix-vector products run per image row either way)."""
    x = rgb.astype(np.float32)
    y = 16.0 + x @ np.array([65.481, 128.553, 24.966], np.float32) / 255.0
    # The colour transform is linear, so average each 2x2 block of RGB first (chroma at quarter size).
    q = 0.25 * (x[..., 0::2, 0::2, :] + x[..., 1::2, 0::2, :] + x[..., 0::2, 1::2, :] + x[..., 1::2, 1::2, :])
    cb = 128.0 + q @ np.array([-37.797, -74.203, 112.0], np.float32) / 255.0
    cr = 128.0 + q @ np.array([112.0, -93.786, -18.214], np.float32) / 255.0
    return tuple(np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in (y, cb, cr))


def _yuv_frame(planes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> "av.VideoFrame":
    """A yuv420p frame from its Y, U, V planes, with the row padding zeroed.

    PyAV/swscale leave the alignment padding of each row uninitialised, and x264 reads it for
    widths that are not a multiple of 32: identical encodes then differ. Filling every byte
    ourselves keeps encoding bit-reproducible (the synthetic world's determinism test).
    """
    h, w = planes[0].shape
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(frame.planes, planes):
        if plane.line_size == data.shape[1]:
            plane.update(np.ascontiguousarray(data))  # rows without padding
        else:
            buf = np.zeros((plane.height, plane.line_size), np.uint8)
            buf[:, : data.shape[1]] = data
            plane.update(buf)
    return frame


def encode_mp4(frames: np.ndarray, path_or_file: str | os.PathLike | BinaryIO, fps: int = 30, crf: int = 24, *,
               preset: str = "veryfast", gop: int = 30, threads: int = 1, faststart: bool = True,
               deterministic: bool = True) -> None:
    """Writes uint8 [N, H, W, 3] RGB frames as H.264 yuv420p mp4 (Ego-Exo4D uses crf 24).

    gop: keyframe interval in frames; short GOPs make seeking to a clip cheap.
    threads: x264 threads (1 keeps the output bit-identical across runs and machines).
    faststart: put the index (moov) first, so a cut-off file still opens and decodes its head.
    deterministic: turn off x264's mbtree so the same frames always give the same bytes.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_mp4: expected uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if n == 0 or h % 2 or w % 2:
        raise ValueError(f"encode_mp4: need >= 1 frame and even height/width for yuv420p, got {frames.shape}")
    is_path = isinstance(path_or_file, (str, os.PathLike))
    if faststart and not is_path:
        # The faststart pass re-reads the finished file by name, so go through a temporary file.
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = os.path.join(tmp, "clip.mp4")
            encode_mp4(frames, tmp_path, fps, crf, preset=preset, gop=gop, threads=threads, faststart=True,
                       deterministic=deterministic)
            with open(tmp_path, "rb") as f:
                path_or_file.write(f.read())
        return
    container = av.open(os.fspath(path_or_file) if is_path else path_or_file, mode="w", format="mp4",
                        options={"movflags": "faststart"} if faststart else {})
    try:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = int(gop)
        stream.codec_context.thread_count = int(threads)
        stream.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        if deterministic:
            # x264's macroblock-tree rate control reads uninitialised memory: with it on, two
            # encodes of the same frames differ now and then (seen here on ~1 in 5 runs).
            stream.options["x264-params"] = "mbtree=0"
        y, u, v = rgb_to_yuv420p(frames)  # the whole video in one pass
        for i in range(n):
            frame = _yuv_frame((y[i], u[i], v[i]))
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    finally:
        container.close()
