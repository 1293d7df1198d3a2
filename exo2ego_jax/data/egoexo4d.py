"""Reader of an Ego-Exo4D download (release v2 layout; docs/formats.md section 1).

Reads takes.json (with embedded captures), annotations/splits.json, atomic_descriptions_{split}.json
and keystep_{split}.json, resolves the ego camera and the exo cameras of every take, and maps them to
frame-aligned mp4 files (full size or downscaled/448). Top-level files that cannot be parsed raise an
error naming the file; bad per-take records are skipped and counted in a SkipCounter.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from typing import Any

from exo2ego_jax.data.skips import SkipCounter

NON_CAMERA_KEYS = ("collage", "best_exo")  # entries of frame_aligned_videos that are not cameras
EGO_RGB_STREAMS = ("rgb", "214-1")  # readable / raw stream id of the Aria RGB camera
_SURROGATE = re.compile("[\ud800-\udfff]")  # what invalid UTF-8 bytes decode to with surrogateescape


@dataclasses.dataclass(frozen=True)
class Take:
    take_uid: str
    take_name: str
    root: str  # absolute take directory (<root>/takes/<take_name>)
    split: str | None
    task_name: str
    parent_task_name: str
    duration_sec: float
    ego_cam: str  # "" when no ego camera could be identified
    exo_cams: tuple[str, ...]
    videos: dict[str, str]  # cam_id -> absolute path of the frame-aligned ego rgb / exo mp4
    videos_448: dict[str, str]  # cam_id -> absolute path under downscaled/448 (only files that exist)


@dataclasses.dataclass(frozen=True)
class Narration:
    take_uid: str
    index: int  # position among the kept narrations of this take (time order of the file)
    text: str
    timestamp: float  # seconds from the take start
    subject: str  # "C" (camera wearer) or "O" (someone else)
    ego_visible: bool
    unsure: bool
    best_exo_cam: str | None
    annotation_uid: str


@dataclasses.dataclass(frozen=True)
class KeystepSegment:
    take_uid: str
    index: int
    start: float  # seconds from the take start
    end: float
    step_name: str
    step_description: str
    step_unique_id: int | None
    is_essential: bool


def to_bool(value: Any) -> bool:
    """Tolerant bool: True/False, 1/0, "1"/"0", "true"/"false" (any case), None -> False."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "t", "yes", "y"):
        return True
    if text in ("0", "false", "f", "no", "n", "", "none", "null"):
        return False
    raise ValueError(f"cannot read {value!r} as a bool; expected true/false, 1/0 or '1'/'0'")


def _to_float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def load_json(path: str) -> Any:
    """Parses a top-level JSON file; raises ValueError naming the file when it cannot.

    Invalid UTF-8 bytes survive as lone surrogates (surrogateescape) so the records that contain
    them can be skipped one by one instead of losing the whole file.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: file not found; is the Ego-Exo4D root right, and was this "
                                f"part downloaded (egoexo -o <root> --parts metadata annotations)?")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}. "
                         f"Re-download this file.") from e


def has_bad_text(value: Any) -> bool:
    """Whether a value read by load_json holds invalid UTF-8 (lone surrogates) anywhere."""
    return _has_bad_text(value)


def _has_bad_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(_has_bad_text(k) or _has_bad_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_text(v) for v in value)
    return False


def ego_camera(take: dict[str, Any]) -> str:
    """The ego cam_id of a take record (docs/formats.md 1.3 rule), or "" if there is none."""
    fav = take.get("frame_aligned_videos") or {}
    capture = take.get("capture") or {}
    cameras = capture.get("cameras") or [] if isinstance(capture, dict) else []
    cands = [c.get("cam_id") for c in cameras
             if isinstance(c, dict) and str(c.get("is_ego")).lower() in ("true", "1") and c.get("cam_id")]
    if len(cands) > 1:
        cands = [c for c in cands if c in fav] or cands
    if len(cands) > 1:
        cands = [c for c in cands if "aria" in c.lower()] or cands
    if not cands:  # no capture info: fall back on the Aria naming convention
        cands = [k for k in fav if "aria" in k.lower()]
    return sorted(cands)[0] if cands else ""


def _stream_path(streams: Any, is_ego: bool) -> str | None:
    """relative_path of the ego RGB stream / the exo camera stream of one frame_aligned_videos entry."""
    if not isinstance(streams, dict):
        return None
    if is_ego:
        for key, s in streams.items():
            if isinstance(s, dict) and (key in EGO_RGB_STREAMS or s.get("readable_stream_id") in EGO_RGB_STREAMS
                                        or s.get("stream_id") == "214-1"):
                return s.get("relative_path")
        return None
    s = streams.get("0")
    if not isinstance(s, dict):
        s = next((v for v in streams.values() if isinstance(v, dict) and v.get("relative_path")), None)
    return s.get("relative_path") if s else None


class EgoExo4D:
    """An Ego-Exo4D download (or a synthetic world in the same layout) at `root`."""

    def __init__(self, root: str, *, video_variant: str = "full", skips: SkipCounter | None = None):
        if video_variant not in ("full", "448"):
            raise ValueError(f"EgoExo4D: video_variant must be 'full' or '448', got {video_variant!r}")
        self.root = os.path.abspath(root)
        if not os.path.isfile(os.path.join(self.root, "takes.json")):
            raise FileNotFoundError(f"{self.root}/takes.json not found: root must be an Ego-Exo4D download "
                                    f"(egoexo -o <root> --parts metadata) or a synthetic world")
        self.video_variant = video_variant
        self.skips = skips if skips is not None else SkipCounter()
        self._cache: dict[tuple[str, str], list] = {}
        # take_uid -> (reason, where, detail) of take entries that could not be used: their
        # narrations and keysteps are skipped with this one reason and path, not as unknown takes.
        self.bad_takes: dict[str, tuple[str, str, str]] = {}
        self._splits = self._read_splits()
        self.takes: dict[str, Take] = self._read_takes()

    # --- metadata -------------------------------------------------------------------------------
    def _read_splits(self) -> dict[str, str]:
        path = os.path.join(self.root, "annotations", "splits.json")
        if not os.path.exists(path):
            logging.warning("%s not found: every take gets split None (download --parts annotations)", path)
            return {}
        data = load_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object with 'take_uid_to_split', got {type(data).__name__}")
        out: dict[str, str] = {}
        for split, uids in (data.get("split_to_take_uids") or {}).items():
            for uid in uids or []:
                out[str(uid)] = str(split).lower()
        for uid, split in (data.get("take_uid_to_split") or {}).items():
            if split is not None:
                out[str(uid)] = str(split).lower()  # manifest_gen lower-cases splits
        return out

    def _read_takes(self) -> dict[str, Take]:
        path = os.path.join(self.root, "takes.json")
        data = load_json(path)
        if isinstance(data, dict) and isinstance(data.get("takes"), list):
            data = data["takes"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of take objects, got {type(data).__name__}")
        captures = None
        takes: dict[str, Take] = {}
        for i, rec in enumerate(data):
            where = f"{path}[{i}]"
            if not isinstance(rec, dict):
                self._bad_take(None, "malformed_take", where, f"entry is a {type(rec).__name__}, expected an object")
                continue
            missing = [k for k in ("take_uid", "take_name") if not rec.get(k)]
            if not isinstance(rec.get("frame_aligned_videos"), dict):
                missing.append("frame_aligned_videos")
            label = f"take {rec.get('take_name') or '?'} ({rec.get('take_uid') or 'no take_uid'})"
            if missing:
                self._bad_take(rec.get("take_uid"), "malformed_take", where,
                               f"{label} lacks field(s) {', '.join(missing)}")
                continue
            if _has_bad_text(rec):
                self._bad_take(rec["take_uid"], "non_utf8_text", where, f"{label}: invalid UTF-8 in the take record")
                continue
            if not isinstance(rec.get("capture"), dict):
                if captures is None:
                    captures = self._read_captures()
                rec = {**rec, "capture": captures.get(rec.get("capture_uid"), {})}
            try:
                take = self._parse_take(rec)
            except (TypeError, ValueError, AttributeError) as e:
                self._bad_take(rec["take_uid"], "malformed_take", where, f"{label}: {e}")
                continue
            takes[take.take_uid] = take
        return takes

    def _bad_take(self, uid: Any, reason: str, where: str, detail: str) -> None:
        """Reports an unusable take entry once. With a uid, the examples it loses are counted when
        the annotations are read (under this reason and path); without one, the entry itself is."""
        logging.warning("%s: %s: %s", reason, where, detail)
        if uid:
            self.bad_takes[str(uid)] = (reason, where, detail)
        else:
            self.skips.skip(reason, where, detail)

    def _read_captures(self) -> dict[str, Any]:
        path = os.path.join(self.root, "captures.json")
        if not os.path.exists(path):
            return {}
        data = load_json(path)
        return {c.get("capture_uid"): c for c in data if isinstance(c, dict)} if isinstance(data, list) else {}

    def _parse_take(self, rec: dict[str, Any]) -> Take:
        name = str(rec["take_name"])
        root_dir = str(rec.get("root_dir") or name).strip("/")
        if not root_dir.startswith("takes/"):
            root_dir = f"takes/{root_dir}"  # some releases store root_dir == take_name
        take_root = os.path.join(self.root, root_dir)
        fav = rec["frame_aligned_videos"]
        ego = ego_camera(rec)
        exo = tuple(sorted(k for k in fav if k != ego and k not in NON_CAMERA_KEYS))
        videos: dict[str, str] = {}
        videos_448: dict[str, str] = {}
        for cam in ((ego,) if ego else ()) + exo:
            rel = _stream_path(fav.get(cam), is_ego=cam == ego)
            if not rel:
                continue
            videos[cam] = os.path.join(take_root, rel)
            small = os.path.join(take_root, "frame_aligned_videos", "downscaled", "448", os.path.basename(rel))
            if os.path.exists(small):
                videos_448[cam] = small
        uid = str(rec["take_uid"])
        return Take(take_uid=uid, take_name=name, root=take_root, split=self._splits.get(uid),
                    task_name=str(rec.get("task_name") or ""), parent_task_name=str(rec.get("parent_task_name") or ""),
                    duration_sec=_to_float(rec.get("duration_sec")), ego_cam=ego,
                    exo_cams=tuple(c for c in exo if c in videos), videos=videos, videos_448=videos_448)

    def split_uids(self, split: str) -> list[str]:
        """Take uids of `split` (any case) in takes.json order."""
        split = split.lower()
        return [uid for uid, t in self.takes.items() if t.split == split]

    def video_path(self, take_uid: str, cam_id: str) -> str:
        """Path of a camera's frame-aligned mp4 in this reader's video_variant."""
        take = self.takes.get(take_uid)
        if take is None:
            raise KeyError(f"take {take_uid!r} is not in {self.root}/takes.json")
        videos = take.videos if self.video_variant == "full" else take.videos_448
        if cam_id not in videos:
            raise KeyError(f"take {take.take_name} ({take_uid}) has no {self.video_variant} video for camera "
                           f"{cam_id!r}; cameras: {sorted(videos)}")
        return videos[cam_id]

    def _unusable(self, take: Take, where: str) -> tuple[str, str, str] | None:
        """(reason, path, detail) if the take lacks an ego video or every exo video, else None."""
        videos = take.videos if self.video_variant == "full" else take.videos_448
        if not take.exo_cams:
            return "no_exo_views", where, f"take {take.take_name} has no exo cameras"
        ego = videos.get(take.ego_cam, "")
        if not take.ego_cam or not os.path.exists(ego):
            return "missing_video", ego or take.root, f"{self.video_variant} ego video of {take.take_name}"
        if not any(os.path.exists(videos.get(c, "")) for c in take.exo_cams):
            return "no_exo_views", where, f"no {self.video_variant} exo video file of {take.take_name} exists"
        return None

    # --- annotations ----------------------------------------------------------------------------
    @functools.lru_cache(maxsize=None)
    def _annotations(self, kind: str, split: str) -> dict[str, Any]:
        path = os.path.join(self.root, "annotations", f"{kind}_{split.lower()}.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no {kind} annotations for split {split!r} (test labels are held "
                                    f"out; download with `egoexo -o <root> --parts annotations`)")
        data = load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), dict):
            raise ValueError(f"{path}: expected {{'annotations': {{take_uid: ...}}}}, got "
                             f"{type(data).__name__} with keys {list(data)[:5] if isinstance(data, dict) else ''}")
        return data["annotations"]

    def narrations(self, split: str) -> list[Narration]:
        """Atomic descriptions of `split`, rejected annotations dropped, bad ones skipped and counted.

        Parsed (and counted in `skips`) once per split; later calls return a copy of the same list.
        """
        key = ("narrations", split.lower())
        if key not in self._cache:
            self._cache[key] = self._read_narrations(split)
        return list(self._cache[key])

    def _duration(self, take: Take) -> float:
        """duration_sec, or the ego video's length when takes.json has none."""
        if take.duration_sec > 0:
            return take.duration_sec
        from exo2ego_jax.data import video  # only needed for incomplete metadata
        try:
            return video.probe(self.video_path(take.take_uid, take.ego_cam)).duration
        except (video.VideoError, KeyError):
            return 0.0  # unknown length: accept every non-negative timestamp

    def _read_narrations(self, split: str) -> list[Narration]:
        path = os.path.join(self.root, "annotations", f"atomic_descriptions_{split.lower()}.json")
        out: list[Narration] = []
        for uid, annotations in self._annotations("atomic_descriptions", split).items():
            if not isinstance(annotations, list):
                annotations = [annotations]
            descs = [(a, d) for a in annotations if isinstance(a, dict) and not to_bool(a.get("rejected"))
                     for d in (a.get("descriptions") or [])]
            self.skips.seen(len(descs))
            where = f"{path}:{uid}"
            take = self.takes.get(uid)
            if take is None:
                for _ in descs:
                    self.skips.skip(*self.bad_takes.get(uid, ("unknown_take", where, "take_uid not in takes.json")))
                continue
            bad = self._unusable(take, where) if descs else None
            if bad is not None:
                for _ in descs:
                    self.skips.skip(*bad)
                continue
            duration = self._duration(take)
            index = 0
            for ann, d in sorted(descs, key=lambda ad: _to_float(ad[1].get("timestamp") if isinstance(ad[1], dict)
                                                                  else None, -1.0)):
                try:
                    if not isinstance(d, dict) or not isinstance(d.get("text"), str) or d.get("timestamp") is None:
                        raise ValueError("description needs 'text' and 'timestamp'")
                    if _has_bad_text(d):
                        self.skips.skip("non_utf8_text", where, repr(d.get("text"))[:60])
                        continue
                    ts = float(d["timestamp"])
                    if not d["text"].strip():  # would train on the end-of-turn token alone
                        self.skips.skip("empty_text", where, f"narration at {ts} s has no text")
                        continue
                    if ts < 0 or (duration > 0 and ts > duration):
                        self.skips.skip("narration_outside_video", where, f"timestamp {ts} s not in [0, {duration}] s")
                        continue
                    best = d.get("best_exo")
                    best_cam = best.get("cam_id") if isinstance(best, dict) else best
                    out.append(Narration(
                        take_uid=uid, index=index, text=d["text"].strip(), timestamp=ts,
                        subject=str(d.get("narration_subject", d.get("subject", "C")) or "C"),
                        ego_visible=to_bool(d.get("ego_visible", True)), unsure=to_bool(d.get("unsure")),
                        best_exo_cam=str(best_cam) if best_cam else None,
                        annotation_uid=str(ann.get("annotation_uid") or "")))
                    index += 1
                except (TypeError, ValueError) as e:
                    self.skips.skip("malformed_json", where, str(e))
        return out

    def keysteps(self, split: str) -> list[KeystepSegment]:
        """Keystep segments of `split`; bad segments skipped and counted (once per split)."""
        key = ("keysteps", split.lower())
        if key not in self._cache:
            self._cache[key] = self._read_keysteps(split)
        return list(self._cache[key])

    def _read_keysteps(self, split: str) -> list[KeystepSegment]:
        path = os.path.join(self.root, "annotations", f"keystep_{split.lower()}.json")
        out: list[KeystepSegment] = []
        for uid, ann in self._annotations("keystep", split).items():
            for a in (ann if isinstance(ann, list) else [ann]):
                segments = a.get("segments") if isinstance(a, dict) else None
                where = f"{path}:{uid}"
                if not isinstance(segments, list):
                    self.skips.seen()
                    self.skips.skip("malformed_json", where, "annotation needs a 'segments' list")
                    continue
                self.skips.seen(len(segments))
                take = self.takes.get(uid)
                if take is None:
                    for _ in segments:
                        self.skips.skip(*self.bad_takes.get(uid, ("unknown_take", where, "take_uid not in takes.json")))
                    continue
                for i, s in enumerate(segments):
                    try:
                        if _has_bad_text(s):
                            self.skips.skip("non_utf8_text", where, f"segment {i}")
                            continue
                        start, end = float(s["start_time"]), float(s["end_time"])
                        if start < 0 or end < start or (take.duration_sec > 0 and start > take.duration_sec):
                            self.skips.skip("narration_outside_video", where,
                                            f"segment [{start}, {end}] s outside [0, {take.duration_sec}] s")
                            continue
                        if not str(s.get("step_description") or "").strip() and not str(s.get("step_name") or "").strip():
                            self.skips.skip("empty_text", where, f"segment {i} has no step_name or step_description")
                            continue
                        uid_step = s.get("step_unique_id")
                        out.append(KeystepSegment(
                            take_uid=uid, index=i, start=start,
                            end=min(end, take.duration_sec) if take.duration_sec > 0 else end,
                            step_name=str(s.get("step_name") or ""),
                            step_description=str(s.get("step_description") or ""),
                            step_unique_id=int(uid_step) if uid_step is not None else None,
                            is_essential=to_bool(s.get("is_essential"))))
                    except (KeyError, TypeError, ValueError) as e:
                        self.skips.skip("malformed_json", where, f"segment {i}: {e}")
        return out
