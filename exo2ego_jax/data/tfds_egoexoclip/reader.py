"""Reading a prepared ``ego_exo_clip`` dataset as records.py records (no TensorFlow needed).

- :func:`dataset_dir` resolves a dataset directory or a tfds name ("ego_exo_clip/atomic[:1.0.0]").
- :func:`load_meta` gives the same dict as a plain writer's records.json (splits with shard files,
  ``num_records`` and ``ego_first``), so code written against records.json reads either format.
- :class:`TfdsRecords` is a random-access source over ``tfds.data_source`` that yields the record
  dicts of ``records.decode_record``.
- :func:`decode_example` decodes one raw shard record (a serialised tf.Example), so readers of raw
  ArrayRecord bytes (``records.decode_record``) handle both formats.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

NAME = "ego_exo_clip"
_INFO = "dataset_info.json"


def _default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _latest_version(config_dir: str) -> str | None:
    versions = [v for v in os.listdir(config_dir) if os.path.exists(os.path.join(config_dir, v, _INFO))]
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()), default=None)


def dataset_dir(path: str, data_dir: str | None = None) -> str | None:
    """The prepared dataset directory ``path`` names, or None when it is no tfds dataset.

    ``path``: a dataset directory (holding dataset_info.json), or a name
    "ego_exo_clip/<config>[:<version>]" under ``data_dir`` (default $TFDS_DATA_DIR or
    ~/tensorflow_datasets). A name whose dataset is missing is an error saying how to build it.
    """
    if os.path.exists(os.path.join(path, _INFO)):
        return path
    if not path.startswith(NAME + "/"):
        return None
    name, _, version = path.partition(":")
    config = name.split("/", 1)[1]
    root = os.path.join(data_dir or _default_data_dir(), NAME, config)
    version = version or (_latest_version(root) if os.path.isdir(root) else None)
    out = os.path.join(root, version or "<version>")
    if not version or not os.path.exists(os.path.join(out, _INFO)):
        raise FileNotFoundError(
            f"tfds dataset {path!r} not found under {os.path.dirname(os.path.dirname(root))} (looked for "
            f"{out}/{_INFO}; the data_dir is data_dir= or $TFDS_DATA_DIR); build it with `python -m "
            "exo2ego_jax.main --config configs/data/records.py:writer=tfds --config.data.root=EGOEXO4D_DIR "
            "--workdir DATA_DIR`")
    return out


def _name_and_data_dir(tdir: str) -> tuple[str, str]:
    """("ego_exo_clip/<config>:<version>", data_dir) of DATA_DIR/ego_exo_clip/<config>/<version>."""
    tdir = os.path.abspath(tdir)
    version_dir, config_dir = tdir, os.path.dirname(tdir)
    name_dir = os.path.dirname(config_dir)
    if os.path.basename(name_dir) != NAME:
        raise ValueError(f"{tdir}: expected a dataset directory DATA_DIR/{NAME}/<config>/<version>")
    return (f"{NAME}/{os.path.basename(config_dir)}:{os.path.basename(version_dir)}",
            os.path.dirname(name_dir))


@functools.lru_cache(maxsize=16)
def _builder(tdir: str):
    import tensorflow_datasets as tfds

    import exo2ego_jax.data.tfds_egoexoclip.builder  # noqa: F401  (registers ego_exo_clip)
    return tfds.builder_from_directory(tdir)


def load_meta(tdir: str) -> dict[str, Any]:
    """records.json-shaped metadata of a prepared dataset: format, storage, kind, config, skips,
    ``dataset_dir`` and per split ``files`` (relative to it), ``num_records``, ``ego_first``."""
    with open(os.path.join(tdir, _INFO)) as f:
        info = json.load(f)
    if info.get("name") != NAME:
        raise ValueError(f"{tdir}/{_INFO}: dataset {info.get('name')!r}, expected {NAME!r}")
    meta_path = os.path.join(tdir, "metadata.json")
    extra = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    builder = _builder(os.path.abspath(tdir))
    splits = {}
    for split, sinfo in builder.info.splits.items():
        files = [os.path.relpath(os.fspath(p), tdir) for p in sinfo.filepaths]
        splits[split] = {"files": files, "num_records": int(sinfo.num_examples),
                         "ego_first": extra.get("ego_first", {}).get(split, [])}
    return {"format": extra.get("format"), "storage": extra.get("storage"), "kind": extra.get("kind"),
            "video_variant": extra.get("video_variant"), "config": extra.get("config", {}),
            "skips": extra.get("skips", {}), "splits": splits, "dataset_dir": os.path.abspath(tdir),
            "tfds_name": _name_and_data_dir(tdir)[0]}


class TfdsRecords:
    """Random-access record dicts of one split via ``tfds.data_source`` (Grain source protocol).

    Picklable for Grain worker processes: each process opens its own data source.
    """

    def __init__(self, tdir: str, split: str):
        self.dataset_dir, self.split = os.path.abspath(tdir), split
        self.name, self.data_dir = _name_and_data_dir(self.dataset_dir)
        self._source = None
        self._length = len(self._open())

    def _open(self):
        if self._source is None:
            import tensorflow_datasets as tfds

            import exo2ego_jax.data.tfds_egoexoclip.builder  # noqa: F401  (registers ego_exo_clip)
            available = load_meta(self.dataset_dir)["splits"]
            if self.split not in available:
                raise KeyError(f"{self.dataset_dir}: no split {self.split!r}; have {sorted(available)}")
            self._source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir, download=False)
        return self._source

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        from exo2ego_jax.data.tfds_egoexoclip.features import from_example
        return from_example(self._open()[int(index)])

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __repr__(self) -> str:
        return f"TfdsRecords({self.name}, split={self.split!r}, {self._length} records)"


def decode_example(data: bytes) -> dict[str, Any]:
    """A serialised ego_exo_clip tf.Example (raw shard bytes) -> the records.py record dict."""
    from tensorflow_datasets.proto import tf_example_pb2

    from exo2ego_jax.data.tfds_egoexoclip import features as features_lib

    keys = tf_example_pb2.Example.FromString(data).features.feature.keys()
    kind, storage = features_lib.infer_config(keys)
    return features_lib.from_example(features_lib.features_for(kind, storage).deserialize_example_np(data))
