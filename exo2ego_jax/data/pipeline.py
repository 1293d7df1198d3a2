"""Grain input pipelines: clip pairs, single views and instruction data -> static numpy batches.

Every builder has the same shape (big_vision / kauldron style, one pipeline per process):

    MapDataset source -> seeded global shuffle (reshuffled per epoch) -> repeat -> per-process shard
    -> batch of inputs -> one map that decodes, samples frames and resizes/crops straight
    into the batch arrays (uint8; the tower normalises on the device, or float32 normalised here with
    ``pixel_dtype="float32"``) and tokenises with the chat template (skipped inputs: example_mask 0)
    -> IterDataset (thread prefetch) -> optional multiprocess prefetch -> skip tally (main process)

and returns a ``grain.IterDataset``; its iterator has ``get_state``/``set_state`` (the trainer
checkpoints it) and ``.skips`` (a SkipCounter whose counts are part of that state). Batch keys
follow docs/ARCHITECTURE.md ("Batches"); with ``sampling="fps"`` a ``frame_mask`` [B, V, F] marks
real frames. Shards are equal-sized (the tail of an epoch that does not divide by
``process_count`` is dropped) and a skipped input leaves a masked slot instead of pulling in
another one, so every process runs the same number of steps per epoch whatever it skips.
"""
from __future__ import annotations

from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from exo2ego_jax import tokenizer as tokenizer_lib
from exo2ego_jax.data import instructions, records, text as text_lib, video as video_lib
from exo2ego_jax.data.pipeline_fields import pipeline_config  # re-exported: configs import the light module
from exo2ego_jax.data.pipeline_ops import (BatchTransform, SkipTallyDataset, load_clip, pixel_dtype, skip,
                                           skip_metrics)
from exo2ego_jax.data.skips import SkipCounter

__all__ = ["pipeline_config", "pair_dataset", "single_view_dataset", "instruction_dataset",
           "make_dataset", "load_tokenizer", "skip_metrics", "apply_preprocess"]


def apply_preprocess(cfg, preprocess) -> None:
    """Copies a tower's PreprocessConfig (data/preprocess_config.py) into the pipeline fields."""
    h, w = preprocess.output_size
    if h != w:
        raise ValueError(f"tower preprocessing gives {h}x{w} frames; the pipeline needs square frames")
    cfg.image_size = int(h)
    cfg.image_mean = tuple(preprocess.image_mean)
    cfg.image_std = tuple(preprocess.image_std)
    cfg.resize_mode = "center_crop" if preprocess.crop is not None else "resize"


# --- sources ------------------------------------------------------------------------------------
class _IndexedRecords(grain.sources.RandomAccessDataSource):
    """(record index, bytes) from ArrayRecord shards, optionally restricted to a subset of indices."""

    def __init__(self, files: Sequence[str], subset: Sequence[int] | None = None):
        self._source = grain.sources.ArrayRecordDataSource(list(files))
        self._subset = None if subset is None else np.asarray(subset, np.int64)

    def __len__(self):
        return len(self._source) if self._subset is None else len(self._subset)

    def __getitem__(self, i):
        j = int(i if self._subset is None else self._subset[i])
        return j, self._source[j]


def _order(ds: grain.MapDataset, cfg, process_index: int, process_count: int) -> grain.MapDataset:
    """Seeded shuffle (reshuffled per epoch) -> repeat -> equal per-process shards."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    if len(ds) < process_count:
        raise ValueError(f"{len(ds)} examples cannot feed {process_count} processes; build more data")
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs if cfg.num_epochs > 0 else None)
    if cfg.num_epochs > 0:
        ds = ds[: len(ds) // process_count * process_count]
    return ds[process_index::process_count]


def _spec(cfg, pixel_keys: Sequence[str]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Per-example shapes/dtypes of a batch (docs/ARCHITECTURE.md "Batches")."""
    t, f, s = cfg.max_len, cfg.num_frames, cfg.image_size
    spec = {"input_ids": ((t,), np.int32), "labels": ((t,), np.int32), "attention_mask": ((t,), np.int32),
            "video_mask": ((1,), np.int32), "example_mask": ((), np.int32)}
    for key in pixel_keys:
        spec[key] = ((1, f, s, s, 3), pixel_dtype(cfg))
    if cfg.sampling == "fps":
        spec["frame_mask"] = ((1, f), np.int32)
    return spec


def _finish(ds: grain.MapDataset, cfg, fill, pixel_keys: Sequence[str],
            initial_skips: SkipCounter | None = None) -> grain.IterDataset:
    """batch -> build batches (threads / worker processes) -> skip tally."""
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder, batch_fn=list)
    ds = ds.random_map(BatchTransform(fill, _spec(cfg, pixel_keys), cfg.batch_size), seed=cfg.seed)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                              prefetch_buffer_size=max(2, cfg.read_threads)))
    if cfg.worker_count > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count,
                                                         per_worker_buffer_size=cfg.worker_buffer_size))
    return SkipTallyDataset(it, cfg.max_skip_fraction, cfg.min_seen_for_check, initial_skips)


def load_tokenizer(cfg):
    """The tokenizer named by ``cfg.tokenizer`` with <video>/<probe> as special tokens."""
    if not cfg.tokenizer:
        raise ValueError("config.data.tokenizer is empty: set it to an HF tokenizer dir or .gguf file")
    return tokenizer_lib.load_tokenizer(cfg.tokenizer)


# --- examples -----------------------------------------------------------------------------------
def _strict_text(value: Any) -> str:
    """A record's text as str; invalid UTF-8 raises UnicodeDecodeError (never silently replaced)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if not isinstance(value, str):
        raise TypeError(f"text is {type(value).__name__}, expected str")
    value.encode("utf-8")  # lone surrogates (from surrogateescape) raise here
    return value


def _encode_text(tokenizer, cfg, conversations, source: str):
    messages = text_lib.to_messages(conversations, cfg.system_prompt or None, source=source)
    return text_lib.tokenize_conversation(tokenizer, messages, max_len=cfg.max_len,
                                          num_visual_tokens=cfg.num_visual_tokens,
                                          num_probes=cfg.num_probes)


class _RecordFill:
    """Writes one (index, record bytes) example into a batch slot, or returns a skip marker."""

    def __init__(self, cfg, tokenizer, views: tuple[str, ...], where: str):
        self.cfg, self.tokenizer, self.views, self.where = cfg, tokenizer, views, where

    def __call__(self, item, rng: np.random.Generator, slot: dict[str, np.ndarray]):
        index, data = item
        path = f"{self.where}#{index}"
        try:
            rec = records.decode_record(data)
            text = _strict_text(rec["text"])
            kind = rec.get("kind", "atomic")
        except UnicodeError as e:
            return skip("non_utf8_text", path, str(e))
        except (ValueError, KeyError, TypeError) as e:
            return skip("corrupt_record", path, str(e))
        path = f"{path} ({rec.get('take_name')} {kind} {rec.get('index')} {rec.get('ego_cam')}/{rec.get('exo_cam')})"
        prompts = self.cfg.keystep_prompts if kind == "keystep" else self.cfg.caption_prompts
        conv = [{"from": "human", "value": "<video>\n" + prompts[rng.integers(len(prompts))]},
                {"from": "gpt", "value": text}]
        try:
            enc = _encode_text(self.tokenizer, self.cfg, conv, path)
        except text_lib.TextError as e:
            return skip(e.reason, path, str(e))
        if enc.num_videos != 1:
            return skip("placeholder_mismatch", path, f"{enc.num_videos} <video> placeholders, expected 1")
        for view in self.views:
            stored = rec.get(view)
            key = "pixels" if len(self.views) == 1 else f"{view}_pixels"
            try:
                if not isinstance(stored, dict) or not ("mp4" in stored or "frames" in stored):
                    raise video_lib.VideoError(path, "corrupt_record", f"no {view} clip in the record")
                src = stored.get("mp4")
                _, fmask = load_clip(src if src is not None else path, self.cfg, stored=stored, out=slot[key][0])
            except video_lib.VideoError as e:
                return skip(e.reason, f"{path}:{view}", e.detail)
            except (ValueError, TypeError, OSError) as e:
                return skip("corrupt_video", f"{path}:{view}", str(e))
            if "frame_mask" in slot:
                slot["frame_mask"][0] = fmask
        slot["input_ids"][:] = enc.input_ids
        slot["labels"][:] = enc.labels
        slot["attention_mask"][:] = enc.attention_mask
        slot["video_mask"][:] = 1
        return None


def _record_dataset(cfg, records_dir: str, split: str, tokenizer, views: tuple[str, ...],
                    subset_key: str | None, process_index: int, process_count: int) -> grain.IterDataset:
    meta = records.load_meta(records_dir)
    files = records.split_files(records_dir, split)
    subset = meta["splits"][split][subset_key] if subset_key else None
    # Kinds are selected here, before anything is counted: records of a kind this stage does not
    # read are not bad input and never reach the skip fraction.
    subset = records.kind_subset(records_dir, split, tuple(cfg.kinds), subset)
    source = _IndexedRecords(files, subset)
    if len(source) == 0:
        raise ValueError(f"{records_dir}: split {split!r} has no records")
    ds = _order(grain.MapDataset.source(source), cfg, process_index, process_count)
    keys = ("pixels",) if len(views) == 1 else tuple(f"{v}_pixels" for v in views)
    return _finish(ds, cfg, _RecordFill(cfg, tokenizer, views, f"{records_dir}/{split}"), keys)


def pair_dataset(cfg, records_dir: str, split: str, tokenizer, *, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
    """(ego clip, exo clip, text) samples: ``ego_pixels``/``exo_pixels`` [B, 1, F, S, S, 3] + text keys."""
    return _record_dataset(cfg, records_dir, split, tokenizer, ("ego", "exo"), None,
                           process_index, process_count)


def single_view_dataset(cfg, records_dir: str, split: str, tokenizer, *, view: str,
                        process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """One view per sample as ``pixels`` [B, 1, F, S, S, 3]. view="exo": every pair's exo clip;
    view="ego": each ego clip once (records with ``pair_index == 0``)."""
    if view not in ("ego", "exo"):
        raise ValueError(f"single_view_dataset: view must be 'ego' or 'exo', got {view!r}")
    return _record_dataset(cfg, records_dir, split, tokenizer, (view,),
                           "ego_first" if view == "ego" else None, process_index, process_count)


class _InstructionFill:
    """Writes one instruction Sample into a batch slot, or returns a skip marker."""

    def __init__(self, cfg, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer

    def __call__(self, sample: instructions.Sample, rng: np.random.Generator, slot: dict[str, np.ndarray]):
        path = sample.path or f"<text-only sample {sample.id}>"
        try:
            enc = _encode_text(self.tokenizer, self.cfg, sample.conversations, f"sample {sample.id}")
        except text_lib.TextError as e:
            return skip(e.reason, path, str(e))
        expected = 1 if sample.media else 0
        if enc.num_videos != expected:
            return skip("placeholder_mismatch", path, f"{enc.num_videos} <video> placeholders, expected {expected}")
        fmask = np.zeros((self.cfg.num_frames,), np.int32)
        if sample.media:
            try:
                _, fmask = load_clip(sample.path, self.cfg, start=sample.start, end=sample.end,
                                     out=slot["pixels"][0])
            except video_lib.VideoError as e:
                return skip(e.reason, e.path, e.detail)
        else:
            slot["pixels"][...] = 0
        if "frame_mask" in slot:
            slot["frame_mask"][0] = fmask
        slot["input_ids"][:] = enc.input_ids
        slot["labels"][:] = enc.labels
        slot["attention_mask"][:] = enc.attention_mask
        slot["video_mask"][:] = expected
        return None


def instruction_dataset(cfg, tokenizer, *, files: Sequence[str] | None = None, process_index: int = 0,
                        process_count: int = 1) -> grain.IterDataset:
    """LLaVA/VideoLLaMA2 conversation samples (``cfg.instructions`` files) as ``pixels`` batches.

    Files and samples that are malformed are skipped at load time; those counts start the
    iterator's SkipCounter.
    """
    load_skips = SkipCounter()
    samples: list[instructions.Sample] = []
    for path in (files if files is not None else cfg.instructions):
        samples += instructions.read_llava_json(path, data_folder=cfg.data_folder or None, skips=load_skips)
    if not samples:
        raise ValueError(f"no usable instruction samples in {list(files or cfg.instructions)}:\n"
                         f"{load_skips.report()}")
    load_skips.check(cfg.max_skip_fraction)
    load_skips.num_seen -= len(samples)  # the pipeline counts the usable samples as it reads them
    ds = _order(grain.MapDataset.source(samples), cfg, process_index, process_count)
    return _finish(ds, cfg, _InstructionFill(cfg, tokenizer), ("pixels",), load_skips)


def make_dataset(config, split: str, process_index: int, process_count: int,
                 kind: str = "pair") -> grain.IterDataset:
    """Trainer entry (methods delegate here): ``kind`` = pair | ego | exo | instructions."""
    cfg = config.data
    tok = load_tokenizer(cfg)
    if kind == "pair":
        return pair_dataset(cfg, cfg.records_dir, split, tok, process_index=process_index,
                            process_count=process_count)
    if kind in ("ego", "exo"):
        return single_view_dataset(cfg, cfg.records_dir, split, tok, view=kind,
                                   process_index=process_index, process_count=process_count)
    if kind == "instructions":
        return instruction_dataset(cfg, tok, process_index=process_index, process_count=process_count)
    raise ValueError(f"make_dataset: kind must be pair | ego | exo | instructions, got {kind!r}")
