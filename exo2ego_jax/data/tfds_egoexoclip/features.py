"""tfds features of Ego-ExoClip records, and the record dict <-> tfds example conversion.

The features mirror the msgpack record of ``data/records.py`` field by field, so a record read back
from the tfds dataset (:func:`from_example`) equals the one the plain writer stores:

- text fields (``take_uid``, ``kind``, ``text``, cams, ...) are ``Text`` (tfds returns bytes; they are
  decoded strictly as UTF-8 here, so a bad text raises UnicodeDecodeError as with msgpack);
- seconds and fps are float64 stored as raw bytes (tf.Example float lists are float32 only, which
  would shift clip windows by up to ~1e-7 relative);
- each view (``ego``/``exo``) is either the re-encoded H.264 clip as bytes (``mp4``) or the
  pre-decoded uint8 frames [n, H, W, 3] stored as raw bytes (``frames``: no decoding at train time),
  plus ``fps``, ``num_frames``, ``height``, ``width``;
- ``attributes`` (synthetic ground truth, free-form) is a JSON string.
"""
from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

KINDS = ("atomic", "keystep")
STORAGES = ("mp4", "frames")

_TEXT = ("take_uid", "take_name", "kind", "text", "task_name", "ego_cam", "exo_cam")
_INT = ("format", "index", "pair_index")
_FLOAT = ("start", "end")
# Per-kind fields (records.py `_clips` puts them in each record).
_EXTRA_TEXT = {"atomic": ("subject", "best_exo_cam"), "keystep": ("step_name", "step_description")}
_EXTRA_FLOAT = {"atomic": ("timestamp",), "keystep": ()}
_EXTRA_INT = {"atomic": (), "keystep": ("step_unique_id",)}
_VIEW_INT = ("num_frames", "height", "width")


def _float64():
    return tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES)


def _view(storage: str) -> tfds.features.FeaturesDict:
    if storage == "mp4":
        clip = {"mp4": tfds.features.Tensor(shape=(), dtype=np.object_, doc="H.264 mp4 bytes of the clip")}
    elif storage == "frames":
        clip = {"frames": tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8,
                                               encoding=tfds.features.Encoding.BYTES,
                                               doc="uint8 RGB frames [n, H, W, 3]")}
    else:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    return tfds.features.FeaturesDict({**clip, "fps": _float64(),
                                       **{k: tfds.features.Scalar(np.int64) for k in _VIEW_INT}})


@functools.lru_cache(maxsize=None)
def features_for(kind: str, storage: str) -> tfds.features.FeaturesDict:
    """The FeaturesDict of one builder config (cached: it is also the decoder of raw examples)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    spec: dict[str, Any] = {}
    for k in _TEXT + _EXTRA_TEXT[kind]:
        spec[k] = tfds.features.Text()
    for k in _INT + _EXTRA_INT[kind]:
        spec[k] = tfds.features.Scalar(np.int64)
    for k in _FLOAT + _EXTRA_FLOAT[kind]:
        spec[k] = _float64()
    spec["ego"] = _view(storage)
    spec["exo"] = _view(storage)
    spec["attributes"] = tfds.features.Text(doc="JSON object: synthetic ground truth ({} for real data)")
    return tfds.features.FeaturesDict(spec)


def to_example(rec: dict[str, Any], kind: str, storage: str) -> dict[str, Any]:
    """A records.py record dict -> the tfds example of config (kind, storage). Raises ValueError
    naming the field when the record does not fit (wrong kind or storage)."""
    if rec.get("kind") != kind:
        raise ValueError(f"record {rec.get('take_name')} #{rec.get('index')} has kind {rec.get('kind')!r}; "
                         f"this ego_exo_clip config holds {kind!r}")
    out: dict[str, Any] = {}
    for k in _TEXT + _EXTRA_TEXT[kind]:
        out[k] = str(rec[k])
    for k in _INT + _EXTRA_INT[kind]:
        out[k] = int(rec[k])
    for k in _FLOAT + _EXTRA_FLOAT[kind]:
        out[k] = float(rec[k])
    for view in ("ego", "exo"):
        v = rec[view]
        if storage not in v:
            raise ValueError(f"record {rec['take_name']} #{rec['index']}: {view} view has {sorted(v)}, "
                             f"expected {storage!r} (config.data.storage and the builder config disagree)")
        out[view] = {storage: v[storage], "fps": float(v["fps"]), **{k: int(v[k]) for k in _VIEW_INT}}
    out["attributes"] = json.dumps(rec.get("attributes", {}), sort_keys=True)
    return out


def _text(value: Any) -> str:
    return bytes(value).decode("utf-8") if isinstance(value, (bytes, bytearray, memoryview)) else str(value)


def from_example(ex: dict[str, Any]) -> dict[str, Any]:
    """A decoded tfds example (numpy) -> the record dict records.py writes (same keys and types)."""
    rec: dict[str, Any] = {}
    for k, v in ex.items():
        if k in ("ego", "exo"):
            view = {"fps": float(v["fps"]), **{n: int(v[n]) for n in _VIEW_INT}}
            if "mp4" in v:
                view["mp4"] = bytes(v["mp4"])
            else:
                view["frames"] = np.asarray(v["frames"], np.uint8)
            rec[k] = view
        elif k == "attributes":
            rec[k] = json.loads(_text(v))
        elif isinstance(v, (bytes, bytearray)):
            rec[k] = _text(v)
        elif np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.floating):
            rec[k] = float(v)
        else:
            rec[k] = int(v)
    return rec


def infer_config(keys) -> tuple[str, str]:
    """(kind, storage) of a serialised example from its flat feature keys (tf.Example map keys)."""
    keys = set(keys)
    kind = "atomic" if "timestamp" in keys else "keystep" if "step_name" in keys else None
    frames = "ego/frames/value" in keys or "ego/frames" in keys  # dynamic-shape tensors add /value, /shape
    storage = "mp4" if "ego/mp4" in keys else "frames" if frames else None
    if kind is None or storage is None:
        raise ValueError(f"not an ego_exo_clip example: feature keys {sorted(keys)[:12]}")
    return kind, storage
