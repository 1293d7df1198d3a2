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

import json
import logging
import os
import time
from typing import Any

import grain
import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from exo2ego_jax.data.clip_source import (FORMAT_VERSION, Source, clip_windows, frame_span, iter_records,  # noqa: F401
                                          open_source, split_clips, worker_pool)
from exo2ego_jax.data.skips import SkipCounter
# exo2ego_jax.data.tfds_egoexoclip (and with it tensorflow_datasets, seconds to import) is imported
# inside the functions that read or write a tfds record set: the plain ArrayRecord path never pays for it.

RECORDS_JSON = "records.json"
KINDS = ("atomic", "keystep")  # record kinds build_records writes (config.data.kinds)
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


# --- the plain ArrayRecord writer -----------------------------------------------------------------
def build(cfg, out_dir: str) -> dict[str, Any]:
    """Writes the records of ``cfg.splits`` under ``out_dir``; returns the records.json dict."""
    source = open_source(cfg)
    os.makedirs(out_dir, exist_ok=True)
    meta: dict[str, Any] = {"format": FORMAT_VERSION, "storage": cfg.storage, "video_variant": source.variant,
                            "config": cfg.to_dict(), "splits": {}}
    with worker_pool(cfg.num_workers) as pool:
        for split in cfg.splits:
            files, ego_first, n = [], [], 0
            kind_ranges: dict[str, list[list[int]]] = {}  # kind -> [start, end) runs of record indices
            writer = None
            for rec, first in iter_records(source, split_clips(source, split, cfg), cfg, pool):
                runs = kind_ranges.setdefault(rec["kind"], [])
                if runs and runs[-1][1] == n:
                    runs[-1][1] = n + 1
                else:
                    runs.append([n, n + 1])
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
            meta["splits"][split] = {"files": files, "num_records": n, "ego_first": ego_first, "kinds": kind_ranges}
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


def kind_subset(records_dir: str, split: str, kinds: tuple[str, ...], subset=None) -> list[int] | None:
    """Indices of the records of ``split`` whose kind is in ``kinds`` (within ``subset`` when given);
    None when every record is selected. Selecting kinds is a filter, not a skip: the pipeline reads
    only these records, so records of other kinds never count as bad input.

    Uses the kind index of records.json (``splits.<split>.kinds``); a tfds dataset holds one kind;
    older record directories without the index are scanned once.
    """
    meta = load_meta(records_dir)
    info = meta["splits"][split]
    n = int(info["num_records"])
    built = tuple((meta.get("config") or {}).get("kinds") or KINDS)
    if meta.get("kind") is not None:  # a tfds ego_exo_clip dataset: one kind per dataset
        have = {meta["kind"]: [[0, n]]}
    elif "kinds" in info:
        have = info["kinds"]
    elif set(built) <= set(kinds):
        return None if subset is None else list(subset)
    else:
        logging.info("%s: records.json has no kind index (built by an older version): reading the kind of "
                     "every %s record once", records_dir, split)
        have = {}
        source = PlainRecords(split_files(records_dir, split))
        for i in range(n):
            try:
                kind = source[i].get("kind", "atomic")
            except (ValueError, UnicodeDecodeError):
                kind = kinds[0]  # unreadable: kept, so the pipeline counts it as a corrupt record
            have.setdefault(kind, []).append([i, i + 1])
    if set(have) <= set(kinds):
        return None if subset is None else list(subset)
    wanted = np.zeros((n,), bool)
    for kind in kinds:
        for start, end in have.get(kind, []):
            wanted[start:end] = True
    if not wanted.any():
        raise ValueError(f"{records_dir}: split {split!r} has no records of kind(s) {list(kinds)} "
                         f"(config.data.kinds); it holds {sorted(have)}")
    picked = np.flatnonzero(wanted) if subset is None else np.asarray(subset, np.int64)[wanted[np.asarray(subset, np.int64)]]
    return [int(i) for i in picked]


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
