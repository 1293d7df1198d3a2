"""Clips of an Ego-Exo4D download (or a synthetic world) and their views: the one reader both record
writers use (``data/records.py``, the tfds builder ``data/tfds_egoexoclip``) and the Exo2Ego demo's
pre-decoded clips.

- :func:`clip_windows` / :func:`frame_span`: clip windows around narration timestamps, in frames.
- :func:`probe_aligned`: a frame-aligned view's header checked against its take (fps and length);
  a view that decodes but is not aligned (re-encoded at another rate, cut short) raises
  ``VideoError(reason="misaligned_video")`` instead of being clamped to its last frames.
- :func:`open_source` / :func:`split_clips` / :func:`iter_records`: the example generator; every
  bad input is skipped and counted in ``Source.skips`` (examples lost; dropped exo views of kept
  clips are counted separately as views).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
from typing import Any, Iterator

import numpy as np

from exo2ego_jax import progress
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data.egoexo4d import EgoExo4D
from exo2ego_jax.data.skips import SkipCounter

FORMAT_VERSION = 1  # of a record dict (records.json "format", tfds metadata "format")
EGO_EXO4D_FPS = 30.0  # frame-aligned Ego-Exo4D videos are 30 fps (Ego-Exo4D docs, "frame_aligned_videos")


# --- clip windows -------------------------------------------------------------------------------
def clip_windows(timestamps: dict[str, list[float]], cfg) -> dict[str, list[tuple[float, float]]]:
    """Per take, a (start, end) window in seconds around each sorted narration timestamp.

    ``egoclip``: length_i = clip_mean_sec * beta_take / mean(beta over takes), beta_take = mean gap
    between the take's consecutive narrations (takes with one narration use the split's mean).
    """
    if cfg.clip_rule == "fixed":
        return {u: [(t - cfg.clip_sec / 2, t + cfg.clip_sec / 2) for t in ts] for u, ts in timestamps.items()}
    if cfg.clip_rule != "egoclip":
        raise ValueError(f"config.data.clip_rule must be 'egoclip' or 'fixed', got {cfg.clip_rule!r}")
    betas = {u: float(np.mean(np.diff(sorted(ts)))) for u, ts in timestamps.items() if len(ts) > 1}
    betas = {u: b for u, b in betas.items() if b > 0}
    alpha = float(np.mean(list(betas.values()))) if betas else 1.0
    out = {}
    for uid, ts in timestamps.items():
        half = cfg.clip_mean_sec * betas.get(uid, alpha) / alpha / 2
        out[uid] = [(t - half, t + half) for t in ts]
    return out


def frame_span(start: float, end: float, num_frames: int, fps: float, min_frames: int) -> tuple[int, int]:
    """[first, last) frame indices of a window, widened to ``min_frames`` and clamped to the video."""
    first = int(np.floor(max(0.0, start) * fps))
    last = int(np.ceil(min(end, num_frames / fps) * fps))
    if last - first < min_frames:
        centre = (first + last) / 2
        first = int(round(centre - min_frames / 2))
        last = first + min_frames
        if first < 0:
            first, last = 0, min_frames
        if last > num_frames:
            first, last = max(0, num_frames - min_frames), num_frames
    return first, max(last, first + 1)


# --- alignment -----------------------------------------------------------------------------------
def probe_aligned(path: str, *, fps: float, duration_sec: float, fps_tolerance: float,
                  length_tolerance_sec: float) -> video_lib.VideoInfo:
    """Header of a frame-aligned view, checked against its take. Raises VideoError.

    ``fps``: the frame rate every view of the take has (0: not checked); ``duration_sec``: the
    take's length from takes.json (0: unknown, not checked). A view whose rate differs by more than
    ``fps_tolerance`` or whose frame count differs from ``duration_sec * fps`` by more than
    ``length_tolerance_sec`` seconds of frames is ``misaligned_video``: its frame i is not the
    take's frame i, so clips cut from it would show another moment (or be clamped to its end).
    """
    if not path or not os.path.exists(path):
        raise video_lib.VideoError(path or "<no file>", "missing_video", "file does not exist")
    info = video_lib.probe(path)
    if fps > 0 and abs(info.fps - fps) > fps_tolerance:
        raise video_lib.VideoError(path, "misaligned_video", f"{info.fps:.3f} fps, but the take's frame-aligned "
                                   f"videos are {fps:g} fps (tolerance {fps_tolerance:g})")
    rate = fps if fps > 0 else info.fps
    if duration_sec > 0 and abs(info.num_frames - duration_sec * rate) > length_tolerance_sec * rate:
        raise video_lib.VideoError(path, "misaligned_video", f"{info.num_frames} frames, but the take lasts "
                                   f"{duration_sec:g} s = {duration_sec * rate:.0f} frames at {rate:g} fps "
                                   f"(tolerance {length_tolerance_sec:g} s)")
    return info


# --- building ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Clip:
    """One clip (a window of one take) and the exo cams to pair its ego view with."""
    take: Any
    kind: str
    index: int
    start: float
    end: float
    text: str
    extra: dict[str, Any]


def _store_size(info: video_lib.VideoInfo, short_side: int) -> tuple[int, int] | None:
    """(height, width) with the shorter side at most ``short_side``, even dims; None = keep."""
    if short_side <= 0 or min(info.height, info.width) <= short_side:
        h, w = info.height, info.width
    else:
        s = short_side / min(info.height, info.width)
        h, w = round(info.height * s), round(info.width * s)
    h, w = h - h % 2, w - w % 2
    return None if (h, w) == (info.height, info.width) else (h, w)


def _read_view(path: str, info: video_lib.VideoInfo, clip: _Clip, cfg) -> dict[str, Any]:
    """Decodes one camera's window and returns it re-encoded (mp4) or as frames. Raises VideoError."""
    first, last = frame_span(clip.start, clip.end, info.num_frames, info.fps, cfg.min_clip_frames)
    store_fps = cfg.keystep_store_fps if clip.kind == "keystep" else cfg.atomic_store_fps
    idx = video_lib.sample_frame_indices(
        first, last, fps=min(store_fps, info.fps) if store_fps > 0 else None,
        max_frames=cfg.store_max_frames or None, video_fps=info.fps)
    frames = video_lib.decode_frames(path, idx, size=_store_size(info, cfg.store_short_side))
    fps = info.fps * len(idx) / max(1, last - first)
    n, height, width, _ = frames.shape
    if cfg.storage == "frames":
        return {"frames": frames, "fps": fps, "num_frames": n, "height": height, "width": width}
    if cfg.storage != "mp4":
        raise ValueError(f"config.data.storage must be 'mp4' or 'frames', got {cfg.storage!r}")
    buf = io.BytesIO()
    # faststart needs a seekable re-open, impossible in memory; fragment-free mp4 is fine here.
    video_lib.encode_mp4(frames, buf, fps=max(1, round(fps)), crf=cfg.crf, gop=cfg.gop, faststart=False)
    # The stored clip's own fps: frames are consecutive (atomic) or 1/store_fps apart (keystep).
    return {"mp4": buf.getvalue(), "fps": float(max(1, round(fps))), "num_frames": n, "height": height,
            "width": width}


def take_views(take, videos: dict[str, str], fps: float, cfg) -> dict[str, video_lib.VideoInfo | video_lib.VideoError]:
    """Per camera of ``take`` (ego first, then exo), its aligned header or the VideoError that rules it out."""
    out: dict[str, video_lib.VideoInfo | video_lib.VideoError] = {}
    for cam in (take.ego_cam, *take.exo_cams):
        path = videos.get(cam, "")
        try:
            out[cam] = probe_aligned(path or f"{take.root}:{cam}", fps=fps, duration_sec=take.duration_sec,
                                     fps_tolerance=cfg.fps_tolerance, length_tolerance_sec=cfg.length_tolerance_sec)
        except video_lib.VideoError as e:
            out[cam] = e
    return out


def _take_records(args) -> tuple[list[dict[str, Any]], list[bool], dict]:
    """Worker: the records of one take's clips, which of them start an ego clip, skips.

    A clip is one example: it is lost (``skip``) when its ego view or every exo view is unusable;
    an unusable exo view of a clip that is kept only drops that pair (``skip_view``).
    """
    clips, cfg, attributes, variant, fps = args
    skips = SkipCounter()
    out: list[dict[str, Any]] = []
    first_flags: list[bool] = []
    if not clips:
        return out, first_flags, skips.state_dict()
    take = clips[0].take
    videos = take.videos if variant == "full" else take.videos_448
    views = take_views(take, videos, fps, cfg)  # headers once per take, not per clip
    for clip in clips:
        ego_info = views[take.ego_cam]
        try:
            if isinstance(ego_info, video_lib.VideoError):
                raise ego_info
            ego = _read_view(videos[take.ego_cam], ego_info, clip, cfg)
        except video_lib.VideoError as e:
            skips.skip(e.reason, e.path, e.detail)
            continue
        pairs, failed = [], []
        for cam in take.exo_cams:
            info = views[cam]
            try:
                if isinstance(info, video_lib.VideoError):
                    raise info
                pairs.append((cam, _read_view(videos[cam], info, clip, cfg)))
            except video_lib.VideoError as e:
                failed.append(e)
        if not pairs:
            skips.skip("no_exo_views", take.root, f"{clip.kind} clip {clip.index}: no readable exo view")
        for e in failed:
            skips.skip_view(e.reason, e.path, e.detail)
        if not pairs:
            continue
        for pair_index, (cam, exo) in enumerate(pairs):
            rec = {
                "format": FORMAT_VERSION, "take_uid": take.take_uid, "take_name": take.take_name,
                "kind": clip.kind, "index": clip.index, "pair_index": pair_index, "text": clip.text,
                "start": float(clip.start), "end": float(clip.end), "task_name": take.task_name,
                "ego_cam": take.ego_cam, "exo_cam": cam, "ego": ego, "exo": exo,
                "attributes": _clip_attributes(attributes.get(take.take_uid, {}), clip), **clip.extra,
            }
            out.append(rec)
            first_flags.append(pair_index == 0)
    return out, first_flags, skips.state_dict()


def _clips(reader, split: str, cfg, kinds: tuple[str, ...]) -> Iterator[list[_Clip]]:
    """Per take (takes.json order), the clips of ``split`` for ``kinds``."""
    by_take: dict[str, list[_Clip]] = {}
    if "atomic" in kinds:
        narrations = reader.narrations(split)
        stamps: dict[str, list[float]] = {}
        for n in narrations:
            stamps.setdefault(n.take_uid, []).append(n.timestamp)
        windows = clip_windows({u: sorted(t) for u, t in stamps.items()}, cfg)
        pos = {u: 0 for u in stamps}
        for n in sorted(narrations, key=lambda n: (n.take_uid, n.timestamp)):
            start, end = windows[n.take_uid][pos[n.take_uid]]
            pos[n.take_uid] += 1
            by_take.setdefault(n.take_uid, []).append(_Clip(
                reader.takes[n.take_uid], "atomic", n.index, start, end, n.text,
                {"timestamp": n.timestamp, "subject": n.subject, "best_exo_cam": n.best_exo_cam or ""}))
    if "keystep" in kinds:
        for s in reader.keysteps(split):
            by_take.setdefault(s.take_uid, []).append(_Clip(
                reader.takes[s.take_uid], "keystep", s.index, s.start, s.end,
                s.step_description or s.step_name,
                {"step_name": s.step_name, "step_description": s.step_description,
                 "step_unique_id": -1 if s.step_unique_id is None else int(s.step_unique_id)}))
    for uid in reader.takes:
        if uid in by_take:
            yield by_take[uid]


def _attributes(root: str) -> dict[str, dict]:
    """Per-take ground truth of a synthetic world (``synthetic_meta.json`` "takes"), else {}.

    Per-clip lists (narrations, keysteps) are left out here; :func:`_clip_attributes` picks the
    entry of the clip itself.
    """
    path = os.path.join(root, "synthetic_meta.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    takes = meta.get("takes") if isinstance(meta, dict) else None
    return {k: v for k, v in takes.items() if isinstance(v, dict)} if isinstance(takes, dict) else {}


def _clip_attributes(take_meta: dict, clip: "_Clip") -> dict[str, Any]:
    """Take-level ground truth + the matching narration (by timestamp) or keystep (by index)."""
    out = {k: v for k, v in take_meta.items() if k not in ("narrations", "keysteps")}
    if clip.kind == "atomic":
        ts = clip.extra.get("timestamp")
        match = [n for n in take_meta.get("narrations", []) if isinstance(n, dict)
                 and n.get("timestamp") is not None and abs(float(n["timestamp"]) - ts) < 1e-3]
        if match:
            out["clip"] = match[0]
    else:
        steps = take_meta.get("keysteps", [])
        if 0 <= clip.index < len(steps) and isinstance(steps[clip.index], dict):
            out["clip"] = steps[clip.index]
    return out


# --- the example generator both writers share ------------------------------------------------------
@dataclasses.dataclass
class Source:
    """An opened Ego-Exo4D download: reader, video variant in use, synthetic ground truth, skips."""
    reader: Any
    variant: str
    attributes: dict[str, dict]
    skips: SkipCounter
    fps: float  # frame rate of every frame-aligned view (checked by probe_aligned)


def open_source(cfg) -> Source:
    """Opens ``cfg.root`` (real Ego-Exo4D or a synthetic world) for :func:`iter_records`."""
    skips = SkipCounter(config_field="config.data.max_skip_fraction")
    variant = cfg.video_variant
    reader = EgoExo4D(cfg.root, video_variant="448" if variant == "448" else "full", skips=skips)
    if variant == "auto":  # downscaled/448 when the download has it, else the full-size videos
        variant = "448" if any(t.videos_448 for t in reader.takes.values()) else "full"
        reader.video_variant = variant  # takes carry both variants' paths: no second parse
    return Source(reader, variant, _attributes(cfg.root), skips, world_fps(cfg.root, cfg.video_fps))


def world_fps(root: str, default: float) -> float:
    """Frame rate of the frame-aligned videos under ``root``: a synthetic world states its own in
    ``synthetic_meta.json`` (config.fps); a real Ego-Exo4D download has ``default`` (30)."""
    path = os.path.join(root, "synthetic_meta.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
        fps = meta.get("config", {}).get("fps") if isinstance(meta, dict) else None
        if fps:
            return float(fps)
    return float(default)


def split_clips(source: Source, split: str, cfg, kinds: tuple[str, ...] | None = None) -> list[list[_Clip]]:
    """The clips of ``split`` grouped per take. Call once per split: reading the annotations
    counts their skips (e.g. narrations outside their video) into ``source.skips``."""
    return list(_clips(source.reader, split, cfg, tuple(cfg.kinds if kinds is None else kinds)))


def iter_records(source: Source, clips: list[list[_Clip]], cfg,
                 pool=None) -> Iterator[tuple[dict[str, Any], bool]]:
    """(record dict, starts a new ego clip) in write order; skipped clips/views go to ``source.skips``.

    The one example generator of both writers: :func:`build` msgpack-encodes the records,
    the tfds builder (``tfds_egoexoclip``) turns them into its features.
    """
    tasks = ((take_clips, cfg, source.attributes, source.variant, source.fps) for take_clips in clips)
    results = pool.imap(_take_records, tasks) if pool is not None else map(_take_records, tasks)
    results = progress.bar(results, total=len(clips), desc="records", unit="take")
    for recs, flags, skip_state in results:
        source.skips.merge(SkipCounter.from_state_dict(skip_state))
        yield from zip(recs, flags)


@contextlib.contextmanager
def worker_pool(num_workers: int):
    """A spawn pool of ``num_workers`` decoding/encoding processes, or None for in-process."""
    pool = multiprocessing.get_context("spawn").Pool(num_workers) if num_workers > 0 else None
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()
            pool.join()

