"""The ``ego_exo_clip`` tensorflow-datasets builder: Ego-ExoClip pairs as ArrayRecord shards.

Configs: ``atomic`` (Exo2Ego: a clip around each atomic description, paired with every exo view)
and ``keystep`` (Ego2ExoVLM: keystep segments), each with the clips stored as re-encoded H.264
bytes, or with ``_frames`` as pre-decoded uint8 frames. The examples come from the same generator
as the plain writer (``clip_source.iter_records``: clip windows, EgoExo4D reader, skip accounting),
in the same order (write-time shuffling is off; training shuffles globally through Grain), so
record ``i`` of a split is the same pair in both formats and the ``ego_first`` indices (the
records that start a new ego clip) carry over; they are kept in the dataset's metadata.json.

Build (needs no TensorFlow)::

    python -m exo2ego_jax.main --config configs/data/records.py:writer=tfds \\
        --config.data.root=EGOEXO4D_DIR --workdir DATA_DIR

or ``EgoExoClip(config="atomic", data_dir=DATA_DIR, data_config=cfg).download_and_prepare(
download_config=tfds.download.DownloadConfig(manual_dir=EGOEXO4D_DIR))``; read with
``tfds.data_source("ego_exo_clip/atomic", data_dir=DATA_DIR)`` or ``records.open_records``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import tensorflow_datasets as tfds

from exo2ego_jax.config_lib import ConfigDict
from exo2ego_jax.data import clip_source
from exo2ego_jax.data.skips import SkipCounter
from exo2ego_jax.data.tfds_egoexoclip import features as features_lib


@dataclasses.dataclass
class EgoExoClipConfig(tfds.core.BuilderConfig):
    """One record kind with one clip storage."""
    kind: str = "atomic"  # "atomic" (Exo2Ego pairs) or "keystep" (Ego2ExoVLM segments)
    storage: str = "mp4"  # "mp4": H.264 bytes per view; "frames": uint8 [n, H, W, 3] per view


def config_name(kind: str, storage: str) -> str:
    return kind if storage == "mp4" else f"{kind}_{storage}"


class EgoExoClip(tfds.core.GeneratorBasedBuilder):
    """Ego-ExoClip: synchronised (ego clip, exo clip, text) pairs from Ego-Exo4D."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Atomic-description and keystep pairs; mp4 bytes or uint8 frames."}
    BUILDER_CONFIGS = [
        EgoExoClipConfig(name=config_name(k, s), kind=k, storage=s,
                         description=f"{k} clip pairs, clips stored as {s}")
        for k in features_lib.KINDS for s in features_lib.STORAGES
    ]
    DEFAULT_CONFIG_NAME = "atomic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download Ego-Exo4D (takes.json, annotations/, takes/ with frame_aligned_videos or downscaled/448)
    with the official `egoexo` CLI after accepting its licence, or write the synthetic world
    (configs/data/synthetic.py), and pass that directory as manual_dir (config.data.root).
    """

    def __init__(self, *, data_config=None, **kwargs):
        # `data_config` is configs/data/records.py's `config.data` (clip rule, store fps/size, crf,
        # workers, ...); only needed to generate, not to read a prepared dataset.
        self._data_config = data_config
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            features=features_lib.features_for(cfg.kind, cfg.storage),
            # Off: examples keep the generator's order (see module docstring); Grain shuffles.
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
            homepage="https://ego-exo4d-data.org/",
        )

    def _data_cfg(self, dl_manager):
        if self._data_config is None:
            raise ValueError("EgoExoClip(data_config=...) is required to generate: pass configs/data/records.py's "
                             "config.data (its .root may be left empty when manual_dir is given)")
        cfg = ConfigDict(self._data_config.to_dict())
        if dl_manager.manual_dir and not cfg.root:
            cfg.root = os.fspath(dl_manager.manual_dir)
        if not cfg.root:
            raise ValueError("ego_exo_clip: no Ego-Exo4D root: set config.data.root or "
                             "DownloadConfig(manual_dir=...)")
        if cfg.storage != self.builder_config.storage:
            raise ValueError(f"config.data.storage={cfg.storage!r} but builder config "
                             f"{self.builder_config.name!r} stores {self.builder_config.storage!r}")
        return cfg

    def _split_generators(self, dl_manager):
        cfg = self._data_cfg(dl_manager)
        kind = self.builder_config.kind
        cfg.kinds = (kind,)  # one kind per config; also what metadata.json records
        self._source = clip_source.open_source(cfg)
        self._cfg = cfg
        generators = {}
        for split in cfg.splits:
            clips = clip_source.split_clips(self._source, split, cfg, kinds=(kind,))
            if clips:  # tfds refuses empty splits (e.g. keystep annotations of a split with none)
                generators[split] = self._generate_examples(split, clips)
            else:
                logging.warning("ego_exo_clip/%s: split %s has no %s clips; not written", kind, split, kind)
        if not generators:
            raise ValueError(f"ego_exo_clip/{kind}: no {kind} clips in any of {list(cfg.splits)} under {cfg.root}")
        self.info.metadata.update({"format": clip_source.FORMAT_VERSION, "storage": cfg.storage,
                                   "kind": kind, "video_variant": self._source.variant,
                                   "config": cfg.to_dict(), "ego_first": {}})
        return generators

    def _generate_examples(self, split: str, clips):
        cfg, kind, storage = self._cfg, self.builder_config.kind, self.builder_config.storage
        ego_first: list[int] = []
        n = 0
        with clip_source.worker_pool(cfg.num_workers) as pool:
            for rec, first in clip_source.iter_records(self._source, clips, cfg, pool):
                if first:
                    ego_first.append(n)
                # Integer keys with shuffling disabled: tfds writes examples in key order.
                yield n, features_lib.to_example(rec, kind, storage)
                n += 1
        self.info.metadata["ego_first"][split] = ego_first
        self.info.metadata["skips"] = self._source.skips.state_dict()


def build(cfg, out_dir: str) -> dict[str, Any]:
    """Job ``build_records`` with ``writer="tfds"``: one ``ego_exo_clip`` dataset per kind in
    ``cfg.kinds`` under ``out_dir`` (the tfds data_dir). Returns the job summary; raises
    TooManySkipped past ``cfg.max_skip_fraction`` (after writing, like the plain writer)."""
    summary: dict[str, Any] = {}
    total = SkipCounter(config_field="config.data.max_skip_fraction")
    for kind in cfg.kinds:
        builder = EgoExoClip(config=config_name(kind, cfg.storage), data_dir=out_dir, data_config=cfg)
        if builder.is_prepared():  # tfds reuses a prepared dataset: only when it was built the same way
            _check_same_build(builder, cfg, kind)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=cfg.root or None))
        name = builder.builder_config.name
        for split, info in builder.info.splits.items():
            summary[f"records/{name}/{split}"] = info.num_examples
        summary[f"dataset_dir/{name}"] = os.fspath(builder.data_dir)
        skips = SkipCounter.from_state_dict(builder.info.metadata.get("skips", SkipCounter().state_dict()))
        logging.info("build_records: ego_exo_clip/%s: %s", name, skips.report())
        total.merge(skips)
    summary.update(total.metrics())
    total.check(cfg.max_skip_fraction)
    return summary


# Fields that do not change the examples (where, how fast, how strict).
_NOT_CONTENT = ("out_dir", "num_workers", "max_skip_fraction", "writer", "records_per_shard", "kinds", "splits")


def _check_same_build(builder: EgoExoClip, cfg, kind: str) -> None:
    """Raises when the prepared dataset was built with other content settings than ``cfg``."""
    import json

    stored = builder.info.metadata.get("config", {})
    want = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as stored
    diff = sorted(k for k in set(stored) | set(want) if k not in _NOT_CONTENT and stored.get(k) != want.get(k))
    if diff:
        raise ValueError(
            f"{builder.data_path} already holds ego_exo_clip/{builder.builder_config.name} built with other "
            f"settings ({', '.join(f'{k}: {stored.get(k)!r} there, {want.get(k)!r} now' for k in diff)}); "
            "write to another --workdir or delete that directory")
    logging.info("build_records: reusing %s (same settings)", builder.data_path)
