"""Ego-ExoClip records: synchronised (ego clip, exo clip, text) pairs as ArrayRecord shards.

``run(config, workdir)`` (job ``build_records``) reads an Ego-Exo4D layout with
:class:`~exo2ego_jax.data.egoexo4d.EgoExo4D` and writes, per split, one record per (clip, exo view):

- ``atomic``: a clip window around each atomic-description timestamp. Rule ``egoclip`` (EgoVLP's
  EgoClip rule, which Exo2Ego's Ego-ExoClip extends): the window is centred on the timestamp and its
  length is proportional to the take's mean gap between consecutive narrations, scaled so that the
  mean length over the split is ``clip_mean_sec`` (Exo2Ego: 0.68 s). Rule ``fixed``: ``clip_sec``.
- ``keystep``: each keystep segment [start, end] (Ego2ExoVLM trains on keystep segments).

Each clip is padded to at least ``min_clip_frames`` frames, clamped to the video, and stored either
as a small re-encoded H.264 mp4 (``storage="mp4"``: decoding cost at train time, small disk) or as
pre-decoded uint8 frames (``storage="frames"``: no decoding, large disk). Records are msgpack dicts
(see :func:`encode_record`); shards are written with ``group_size:1`` so Grain's
``ArrayRecordDataSource`` reads any record in O(1) and the pipeline can shuffle globally.
``records.json`` next to the shards lists files, counts, the config and, per split, the indices of
the records that start a new ego clip (``ego_first``), so ego-only single-view datasets see each
ego clip once. Bad input (missing/corrupt videos, takes without exo views, narrations outside their
video) is skipped and counted per reason; ``max_skip_fraction`` stops the job.

``config.data.writer="tfds"`` writes the same records (same generator, :func:`iter_records`, same
order) through the tensorflow-datasets builder ``ego_exo_clip`` (``data/tfds_egoexoclip``) instead.
Readers accept both formats: :func:`load_meta` / :func:`split_files` take a tfds dataset directory
too, :func:`decode_record` decodes both serialisations to the same dict, and :func:`open_records`
is a random-access source of decoded records (``tfds.data_source`` for tfds datasets).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import time
from typing import Any, Iterator

import msgpack
import numpy as np

from exo2ego_jax import progress
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data.skips import SkipCounter

RECORDS_JSON = "records.json"
FORMAT_VERSION = 1
_ND = 1  # msgpack ext type code of a numpy array
# A serialised tf.Example starts with field 1 (features), wire type 2: byte 0x0a. A msgpack record
# starts with a map header (0x80-0x8f, 0xde, 0xdf); 0x0a would be the integer 10, never a record.
_TF_EXAMPLE_TAG = b"\x0a"


# --- serialisation ------------------------------------------------------------------------------
def _default(obj):
    if isinstance(obj, np.ndarray):
        header = json.dumps({"dtype": obj.dtype.str, "shape": obj.shape}).encode()
        return msgpack.ExtType(_ND, len(header).to_bytes(4, "little") + header
                               + np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"encode_record: cannot serialise {type(obj).__name__}")


def _ext_hook(code: int, data: bytes):
    if code != _ND:
        return msgpack.ExtType(code, data)
    n = int.from_bytes(data[:4], "little")
    header = json.loads(data[4:4 + n])
    return np.frombuffer(data[4 + n:], dtype=np.dtype(header["dtype"])).reshape(header["shape"])


def encode_record(record: dict[str, Any]) -> bytes:
    """msgpack bytes of a record dict (str/bytes/numbers/lists/dicts/numpy arrays)."""
    return msgpack.packb(record, default=_default, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_record`; also decodes the raw shard records of the tfds builder
    (serialised tf.Example, see ``tfds_egoexoclip``) into the same dict. Raises ValueError on
    bytes that are neither (UnicodeDecodeError on a text that is not UTF-8)."""
    if bytes(data[:1]) == _TF_EXAMPLE_TAG:
        from exo2ego_jax.data.tfds_egoexoclip.reader import decode_example
        try:
            return decode_example(data)
        except UnicodeDecodeError:
            raise
        except Exception as e:  # protobuf / tfds raise several unrelated types on garbage
            raise ValueError(f"not an ego_exo_clip tf.Example ({type(e).__name__}: {e})") from e
    try:
        out = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except UnicodeDecodeError:
        raise
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"not a msgpack record ({type(e).__name__}: {e})") from e
    if not isinstance(out, dict):
        raise ValueError(f"record is a {type(out).__name__}, expected a dict")
    return out


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


def _read_view(path: str, clip: _Clip, cfg) -> dict[str, Any]:
    """Decodes one camera's window and returns it re-encoded (mp4) or as frames. Raises VideoError."""
    if not os.path.exists(path):
        raise video_lib.VideoError(path, "missing_video", "file does not exist")
    info = video_lib.probe(path)
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


def _take_records(args) -> tuple[list[dict[str, Any]], list[bool], dict]:
    """Worker: the records of one take's clips, which of them start an ego clip, skips."""
    clips, cfg, attributes, variant = args
    skips = SkipCounter()
    out: list[dict[str, Any]] = []
    first_flags: list[bool] = []
    for clip in clips:
        take = clip.take
        videos = take.videos if variant == "full" else take.videos_448
        try:
            ego = _read_view(videos.get(take.ego_cam, ""), clip, cfg)
        except video_lib.VideoError as e:
            skips.skip(e.reason, e.path, e.detail)
            continue
        pairs = []
        for cam in take.exo_cams:
            try:
                pairs.append((cam, _read_view(videos.get(cam, ""), clip, cfg)))
            except video_lib.VideoError as e:
                skips.skip(e.reason, e.path or f"{take.root}:{cam}", e.detail)
        if not pairs:
            skips.skip("no_exo_views", take.root, f"{clip.kind} clip {clip.index}: no readable exo view")
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


def open_source(cfg) -> Source:
    """Opens ``cfg.root`` (real Ego-Exo4D or a synthetic world) for :func:`iter_records`."""
    from exo2ego_jax.data.egoexo4d import EgoExo4D

    skips = SkipCounter(config_field="config.data.max_skip_fraction")
    variant = cfg.video_variant
    if variant == "auto":  # downscaled/448 when the download has it, else the full-size videos
        probe_reader = EgoExo4D(cfg.root, video_variant="full", skips=SkipCounter())
        variant = "448" if any(t.videos_448 for t in probe_reader.takes.values()) else "full"
    reader = EgoExo4D(cfg.root, video_variant=variant, skips=skips)
    return Source(reader, variant, _attributes(cfg.root), skips)


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
    tasks = ((take_clips, cfg, source.attributes, source.variant) for take_clips in clips)
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


# --- the plain ArrayRecord writer -----------------------------------------------------------------
def build(cfg, out_dir: str) -> dict[str, Any]:
    """Writes the records of ``cfg.splits`` under ``out_dir``; returns the records.json dict."""
    from array_record.python.array_record_module import ArrayRecordWriter

    source = open_source(cfg)
    os.makedirs(out_dir, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "storage": cfg.storage, "video_variant": source.variant,
                            "config": cfg.to_dict(), "splits": {}}
    with worker_pool(cfg.num_workers) as pool:
        for split in cfg.splits:
            files, ego_first, n = [], [], 0
            writer = None
            for rec, first in iter_records(source, split_clips(source, split, cfg), cfg, pool):
                if writer is None or n % cfg.records_per_shard == 0:
                    if writer is not None:
                        writer.close()
                    name = f"{split}.array_record-{len(files):05d}"
                    files.append(name)
                    writer = ArrayRecordWriter(os.path.join(out_dir, name), "group_size:1")
                writer.write(encode_record(rec))
                if first:
                    ego_first.append(n)
                n += 1
            if writer is not None:
                writer.close()
            meta["splits"][split] = {"files": files, "num_records": n, "ego_first": ego_first}
            logging.info("build_records: %s: %d records in %d shards", split, n, len(files))
    meta["skips"] = source.skips.state_dict()
    with open(os.path.join(out_dir, RECORDS_JSON), "w") as f:
        json.dump(meta, f, indent=1)
    logging.info("build_records: %s", source.skips.report())
    source.skips.check(cfg.max_skip_fraction)
    return meta


# --- reading either format ------------------------------------------------------------------------
def _tfds_dir(path: str, data_dir: str | None = None) -> str | None:
    """The tfds dataset directory ``path`` names (a dir, or "ego_exo_clip/<config>[:version]"), else None."""
    if os.path.exists(os.path.join(path, RECORDS_JSON)):
        return None
    from exo2ego_jax.data.tfds_egoexoclip import reader as tfds_reader
    return tfds_reader.dataset_dir(path, data_dir)


def load_meta(records_dir: str) -> dict[str, Any]:
    """records.json of a records directory (or the same dict for a tfds ``ego_exo_clip`` dataset),
    with a clear error if it is neither."""
    tdir = _tfds_dir(records_dir)
    if tdir is not None:
        from exo2ego_jax.data.tfds_egoexoclip import reader as tfds_reader
        return tfds_reader.load_meta(tdir)
    path = os.path.join(records_dir, RECORDS_JSON)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {records_dir} is neither a records directory nor a tfds "
                                "ego_exo_clip dataset; build one with `python -m exo2ego_jax.main --config "
                                "configs/data/records.py --config.data.root=DIR --workdir OUT`")
    with open(path) as f:
        return json.load(f)


def split_files(records_dir: str, split: str) -> list[str]:
    """Absolute ArrayRecord shard paths of ``split`` (records directory or tfds dataset)."""
    meta = load_meta(records_dir)
    if split not in meta["splits"]:
        raise KeyError(f"{records_dir}: no split {split!r}; have {sorted(meta['splits'])}")
    base = meta.get("dataset_dir", records_dir)
    return [os.path.join(base, f) for f in meta["splits"][split]["files"]]


def open_records(path: str, split: str, *, data_dir: str | None = None):
    """Random-access source of decoded record dicts of ``split``, whichever writer made ``path``.

    ``path``: a records directory (records.json + msgpack shards), a tfds ``ego_exo_clip`` dataset
    directory, or a tfds name "ego_exo_clip/<config>[:version]" under ``data_dir`` (read with
    ``tfds.data_source``). Both give the dicts :func:`build` writes; ``len`` and ``source[i]`` work,
    so ``grain.MapDataset.source(open_records(...)).shuffle(seed)`` is a true global shuffle.
    """
    tdir = _tfds_dir(path, data_dir)
    if tdir is not None:
        from exo2ego_jax.data.tfds_egoexoclip import reader as tfds_reader
        return tfds_reader.TfdsRecords(tdir, split)
    return PlainRecords(split_files(path, split))


class PlainRecords:
    """Decoded records of msgpack ArrayRecord shards (grain RandomAccessDataSource protocol)."""

    def __init__(self, files: list[str]):
        import grain
        self.files = list(files)
        self._source = grain.sources.ArrayRecordDataSource(self.files)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return decode_record(self._source[index])

    def __repr__(self) -> str:
        return f"PlainRecords({len(self.files)} shards, {len(self)} records)"


def run(config, workdir: str) -> dict[str, Any]:
    """Job ``build_records``: writes records of ``config.data`` into ``workdir`` (or data.out_dir)
    with the writer ``config.data.writer`` ("array_record": msgpack shards; "tfds": the
    ``ego_exo_clip`` tensorflow-datasets builder, one dataset per kind)."""
    out_dir = config.data.out_dir or workdir
    t0 = time.time()
    if config.data.writer == "tfds":
        from exo2ego_jax.data.tfds_egoexoclip import builder as tfds_builder
        summary = tfds_builder.build(config.data, out_dir)
    elif config.data.writer == "array_record":
        meta = build(config.data, out_dir)
        summary = {f"records/{s}": v["num_records"] for s, v in meta["splits"].items()}
        summary.update(SkipCounter.from_state_dict(meta["skips"]).metrics())
    else:
        raise ValueError(f"config.data.writer must be 'array_record' or 'tfds', got {config.data.writer!r}")
    summary["records/seconds"] = time.time() - t0
    print(f"build_records: wrote {summary} to {out_dir}")
    return summary
