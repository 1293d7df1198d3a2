"""Exo2Ego data: which examples each stage trains on.

Two sources (``config.data.source``):

- ``records`` (real runs): Ego-ExoClip pair records (job build_records) through the Grain pipelines
  of data/pipeline.py: stage 1 reads exo clips, stage 0/2 synchronised pairs, stage 3 LLaVA-style
  instruction JSON (EgoIT) or ego clips. Single-view ``pixels`` are renamed ``exo_pixels`` /
  ``ego_pixels`` for the loss.
- ``arrays`` (demo, tests): clips of a synthetic world pre-decoded once into a small ``.npz``
  (``build_arrays``), so the demo spends its minutes training, not decoding video.

``config.data.mode`` picks the examples (arrays source):
``exo_captions`` (stage 1: every train clip x every exo view, with its caption),
``pairs`` (stage 2: ego clip + one exo view; the caption is trained only for the labelled ego
subset, the rest feed KL + cycle only), ``ego_captions`` (labelled ego clips with captions),
``ego_qa`` (stage 3: synthetic EgoBench questions on the labelled ego clips, the EgoIT stand-in;
``data.qa_categories`` / ``data.qa_distractors`` pick them as for the benchmark).
The labelled subset is ``ego_caption_fraction`` of the train takes: ego captions are scarce,
exo captions abundant (the paper's regime).
"""
from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import os
from typing import Any

import grain
import ml_collections
import numpy as np

from exo2ego_jax import tokenizer as tokenizer_lib
from exo2ego_jax.data import clip_source, egoexo4d, pipeline, records
from exo2ego_jax.data import text as text_lib
from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data.skips import SkipCounter
from exo2ego_jax.eval import prompts as prompts_lib
from exo2ego_jax.eval.loaders_mcq import shuffled_options
from exo2ego_jax.eval.records import MCQRecord
from exo2ego_jax.methods import common
from exo2ego_jax.methods.exo2ego import model as model_lib
from exo2ego_jax.synthetic import egobench as eb

MODES = ("exo_captions", "pairs", "ego_captions", "ego_qa")
CAPTION_PROMPT = "Describe what I am doing."  # [I] user turn of caption examples (demo)


# --- pre-decoded clips ------------------------------------------------------------------------
def build_arrays(world_root: str, out_path: str, *, num_frames: int, image_size: int,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_workers: int = 0, skips=None,
                 max_skip_fraction: float = 0.05) -> dict[str, Any]:
    """Decodes every narration clip (ego + all exo views) of a synthetic world into `out_path` (.npz).

    Frames are sampled uniformly in [start_sec, end_sec) of each narration, resized (squashed) to
    `image_size` squares and stored as uint8. `num_workers` > 1 decodes takes in that many
    threads (same arrays, same order). Bad input is skipped and counted in `skips` (a SkipCounter)
    as by the record writers: narrations the Ego-Exo4D reader rejects (non-UTF-8, empty text, takes
    without their videos, ...), and takes with a view that does not decode or is not frame-aligned
    (every clip needs all views). Raises TooManySkipped past `max_skip_fraction`. Returns a summary.
    """
    skips = skips if skips is not None else SkipCounter(config_field="max_skip_fraction of build_arrays")
    with open(os.path.join(world_root, "synthetic_meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    fps = float(meta["config"]["fps"])
    exo_cams = tuple(sorted(meta["cameras"]["exo"]))
    reader = egoexo4d.EgoExo4D(world_root, skips=skips)
    kept = {(n.take_uid, round(n.timestamp, 3)) for split in ("train", "val") for n in reader.narrations(split)}
    takes = []
    for uid, t in sorted(meta["takes"].items(), key=lambda kv: kv[1]["take_name"]):
        narrations = [n for n in t["narrations"] if (uid, round(float(n["timestamp"]), 3)) in kept]
        if narrations:
            takes.append({**t, "narrations": narrations})
    # Every clip decodes straight into its rows of the output arrays (~1 GB for the demo: no
    # per-take arrays to stack and concatenate); takes that fail are dropped at the end.
    counts = np.array([len(t["narrations"]) for t in takes], np.int64)
    starts = np.cumsum(counts) - counts
    ego = np.empty((int(counts.sum()), num_frames, image_size, image_size, 3), np.uint8)
    exo = np.empty((int(counts.sum()), len(exo_cams), num_frames, image_size, image_size, 3), np.uint8)

    def clips(i: int) -> video_lib.VideoError | None:
        rows = slice(starts[i], starts[i] + counts[i])
        try:
            _take_clips(world_root, takes[i], ego[rows], exo[rows], fps=fps, exo_cams=exo_cams)
        except video_lib.VideoError as e:
            return e
        return None
    # Threads, not processes: FFmpeg decodes outside the GIL, and ~1 GB of clips need no pickling.
    with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
        errors = list(pool.map(clips, range(len(takes))))
    for take, err in zip(takes, errors):
        if err is not None:
            for _ in take["narrations"]:  # every clip of the take needs this view
                skips.skip(err.reason, err.path, err.detail)
    logging.info("build_arrays: %s", skips.report())
    good = [i for i, err in enumerate(errors) if err is None]
    if not good:
        raise ValueError(f"{world_root}: no usable take\n{skips.report()}")
    skips.check(max_skip_fraction)
    if len(good) < len(takes):
        rows = np.concatenate([np.arange(starts[i], starts[i] + counts[i]) for i in good])
        ego, exo = ego[rows], exo[rows]
    takes = [takes[i] for i in good]
    texts = [n["text"] for t in takes for n in t["narrations"]]
    np.savez(out_path, ego=ego, exo=exo, text=np.array(texts),
             take=np.array([t["take_name"] for t in takes for _ in t["narrations"]]),
             split=np.array([t["split"] for t in takes for _ in t["narrations"]]),
             narration=np.array([n["index"] for t in takes for n in t["narrations"]], np.int32),
             mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
             skips=np.array(skips.to_json()))
    return {"clips": len(texts), "exo_views": len(exo_cams), "path": out_path, "skips": skips.report()}


def _take_clips(world_root: str, take: dict[str, Any], ego: np.ndarray, exo: np.ndarray, *, fps: float,
                exo_cams: tuple[str, ...]) -> None:
    """Decodes one take's N narration clips into ego [N, F, S, S, 3] and exo [N, views, F, S, S, 3]
    (uint8). Raises VideoError (the view checked against the take as by the record writers)."""
    base = os.path.join(world_root, "takes", take["take_name"], "frame_aligned_videos")
    n, num_frames, image_size = ego.shape[0], ego.shape[1], ego.shape[2]
    idx = [video_lib.sample_frame_indices(int(t["start_sec"] * fps),
                                          max(int(t["end_sec"] * fps), int(t["start_sec"] * fps) + 1),
                                          num_frames=num_frames, video_fps=fps)
           for t in take["narrations"]]
    flat = np.minimum(np.concatenate(idx), take["num_frames"] - 1).tolist()  # clip c, frame f at c * F + f

    def decode(name: str, out: np.ndarray) -> None:  # out [N, F, S, S, 3]
        path = os.path.join(base, name)
        info = clip_source.probe_aligned(path, fps=fps, duration_sec=float(take["duration_sec"]),
                                         fps_tolerance=0.5, length_tolerance_sec=1.0)
        # Tiny videos, two takes at a time (build_arrays' threads): single-threaded decoders.
        if (info.height, info.width) == (image_size, image_size):  # the demo's videos: no resize
            def write(pos: np.ndarray, rgb: np.ndarray) -> None:
                for p in pos.tolist():  # (usually one position: plain indexing is cheapest)
                    out[p // num_frames, p % num_frames] = rgb
            video_lib.decode_into(path, flat, write, threads="NONE")
            return
        fr = video_lib.resize(video_lib.decode_frames(path, flat, threads="NONE"), image_size, image_size)
        out[:] = np.clip(np.round(fr), 0, 255).astype(np.uint8).reshape(n, num_frames, image_size, image_size, 3)
    decode("aria01_214-1.mp4", ego)
    for v, cam in enumerate(exo_cams):
        decode(f"{cam}.mp4", exo[:, v])


@functools.lru_cache(maxsize=4)
def load_arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _normalise_float(frames: np.ndarray, mean, std) -> np.ndarray:
    return ((frames.astype(np.float32) / 255.0) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@functools.lru_cache(maxsize=16)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[C, 256] float32: every uint8 value of every channel, normalised by `_normalise_float`."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], len(mean), axis=1)
    return np.ascontiguousarray(_normalise_float(values, mean, std).T)


def normalise(frames: np.ndarray, mean, std) -> np.ndarray:
    """uint8 frames [..., C] -> float32 ((x / 255) - mean) / std. A per-channel lookup table gives
    the same bits as the arithmetic at ~1/4 of its CPU time (every training example pays it)."""
    mean = tuple(float(m) for m in np.asarray(mean, np.float32).reshape(-1))
    std = tuple(float(v) for v in np.asarray(std, np.float32).reshape(-1))
    if frames.dtype != np.uint8 or frames.ndim == 0 or frames.shape[-1] != len(mean) or len(std) != len(mean):
        return _normalise_float(frames, mean, std)
    table = _normalise_table(mean, std)
    out = np.empty(frames.shape, np.float32)
    for c in range(len(mean)):
        np.take(table[c], frames[..., c], out=out[..., c])
    return out


def labelled_takes(takes: list[str], fraction: float, seed: int) -> set[str]:
    """The train takes whose ego clips have captions (the scarce ego labels); deterministic."""
    names = sorted(set(takes))
    if fraction >= 1.0:
        return set(names)
    k = max(1, int(round(fraction * len(names))))
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i] for i in order[:k]}


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(path: str):
    return tokenizer_lib.load_tokenizer(path)


def encode(tokenizer, prompt: str, answer: str, *, max_len: int, num_visual_tokens: int):
    messages = [{"role": "user", "content": "<video>\n" + prompt}, {"role": "assistant", "content": answer}]
    return text_lib.tokenize_conversation(tokenizer, messages, max_len=max_len,
                                          num_visual_tokens=num_visual_tokens)


@functools.lru_cache(maxsize=1 << 16)
def cached_encode(tok_path: str, prompt: str, answer: str, *, max_len: int, num_visual_tokens: int):
    """`encode` once per distinct example text and process: a stage revisits each of its few
    thousand texts every epoch, every evaluation scores the same benchmark rows, and the chat
    template + tokenizer cost as much CPU as a tiny model's step. The arrays are read-only."""
    enc = encode(_cached_tokenizer(tok_path), prompt, answer, max_len=max_len, num_visual_tokens=num_visual_tokens)
    for a in (enc.input_ids, enc.labels, enc.attention_mask):
        a.setflags(write=False)  # shared by every batch that holds this text
    return enc


def qa_prompt(question: str, options: list[str], letters: str = "ABCD") -> str:
    """The MCQ prompt used both to train (stage 3) and to evaluate (eval.prompts EgoBench style)."""
    rec = MCQRecord(uid="q", video=None, question=question, options=list(options), answer_index=0)
    return prompts_lib.build_mcq_prompt(rec, "synthetic", style="egobench", first_person=False,
                                        task_details=False)


def _examples(config, split: str) -> list[dict[str, Any]]:
    """Per-example recipes (clip index, exo view, prompt, answer, train-caption flag)."""
    d = config.data
    arr = load_arrays(d.arrays)
    sel = np.nonzero(arr["split"] == split)[0]
    takes = [str(t) for t in arr["take"][sel]]
    labelled = labelled_takes(takes, d.ego_caption_fraction, d.label_seed)
    n_exo = arr["exo"].shape[1]
    out = []
    if d.mode == "exo_captions":
        for i in sel:
            out += [dict(clip=int(i), exo=c, prompt=CAPTION_PROMPT, answer=str(arr["text"][i]), train_text=True)
                    for c in range(n_exo)]
    elif d.mode == "pairs":
        for i in sel:
            lab = str(arr["take"][i]) in labelled
            out += [dict(clip=int(i), exo=c, prompt=CAPTION_PROMPT, answer=str(arr["text"][i]), train_text=lab)
                    for c in range(n_exo)]
    elif d.mode == "ego_captions":
        out = [dict(clip=int(i), exo=-1, prompt=CAPTION_PROMPT, answer=str(arr["text"][i]), train_text=True)
               for i in sel if str(arr["take"][i]) in labelled]
    elif d.mode == "ego_qa":
        where = {(str(t), int(n)): int(i) for i, t, n in zip(range(len(arr["take"])), arr["take"], arr["narration"])}
        items = eb.generate(d.world, take_names=sorted(labelled), seed=d.label_seed,
                            categories=tuple(d.get("qa_categories", eb.CATEGORIES)),
                            distractors=d.get("qa_distractors", "take"))
        for it in items:
            if (it["take_name"], it["narration_index"]) not in where:
                continue  # its clip was skipped by build_arrays (damaged input)
            opts, ans = shuffled_options(it["answer"], it["wrong_answers"], d.label_seed, it["sample_id"])
            out.append(dict(clip=where[(it["take_name"], it["narration_index"])], exo=-1,
                            prompt=qa_prompt(it["question"], opts), answer=opts[ans], train_text=True))
    else:
        raise ValueError(f"config.data.mode={d.mode!r}; expected one of {MODES}")
    if not out:
        raise ValueError(f"{d.arrays}: no examples for split={split!r}, mode={d.mode!r}")
    return out


def check_pixel_stats(config, arr: dict[str, np.ndarray]) -> None:
    """The arrays source hands uint8 frames to the model, whose vision tower normalises them with
    its own mean/std (a quarter of the bytes through the pipeline and the host->device copy, and no
    host-side float pass): the clips' recorded mean/std must be the tower's."""
    _, vision, _, _ = model_lib.model_configs(config)
    if not (np.allclose(arr["mean"], vision.pixel_mean, atol=1e-6) and np.allclose(arr["std"], vision.pixel_std, atol=1e-6)):
        raise ValueError(
            f"{config.data.arrays}: the clips were built for mean {arr['mean'].tolist()} / std {arr['std'].tolist()}, "
            f"but the model's vision tower normalises uint8 frames with mean {list(vision.pixel_mean)} / std "
            f"{list(vision.pixel_std)}: set config.model.vision.image_mean / image_std to the clips' values, or "
            "rebuild the clips with build_arrays(mean=..., std=...) of the tower.")


class _ArrayExample:
    """Recipe -> example dict (uint8 pixels, normalised by the model's tower; text tokenised). Picklable."""

    def __init__(self, config, tokens_per_video: int, views: tuple[str, ...]):
        d = config.data
        self.path, self.tok_path = d.arrays, d.tokenizer
        self.max_len, self.k = d.max_len, tokens_per_video
        self.views = tuple(views)

    def __call__(self, ex: dict[str, Any]) -> dict[str, np.ndarray]:
        arr = load_arrays(self.path)
        enc = cached_encode(self.tok_path, ex["prompt"], ex["answer"], max_len=self.max_len, num_visual_tokens=self.k)
        labels = enc.labels if ex["train_text"] else np.full_like(enc.labels, text_lib.IGNORE_INDEX)
        out = {"input_ids": enc.input_ids, "labels": labels, "attention_mask": enc.attention_mask,
               "video_mask": np.ones((1,), np.int32), "example_mask": np.int32(1)}
        if "ego" in self.views:
            out["ego_pixels"] = arr["ego"][ex["clip"]][None]  # [1, F, H, W, 3] uint8
        if "exo" in self.views:
            c = ex["exo"] if ex["exo"] >= 0 else 0
            out["exo_pixels"] = arr["exo"][ex["clip"], c][None]
        return out


class _Shift:
    """Random translation by up to `pixels` (edge-padded crop), one offset per clip. Picklable."""

    def __init__(self, pixels: int):
        self.s = int(pixels)

    def __call__(self, ex: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        s, ex = self.s, dict(ex)
        for key in ("ego_pixels", "exo_pixels"):
            if key in ex:
                x = ex[key]  # [videos, frames, H, W, C]
                h, w = x.shape[-3:-1]
                dy, dx = rng.integers(0, 2 * s + 1, size=2)
                pad = [(0, 0)] * (x.ndim - 3) + [(s, s), (s, s), (0, 0)]
                ex[key] = np.pad(x, pad, mode="edge")[..., dy:dy + h, dx:dx + w, :]
        return ex


def views(config) -> tuple[str, ...]:
    """Which pixel keys (ego / exo) this stage's batches carry."""
    stage = config.exo2ego.stage
    if stage == 1:
        return ("exo",)
    if stage == 2 and config.data.mode == "pairs":
        return ("ego", "exo")
    if stage == 0:
        return ("ego", "exo")
    return ("ego",)


def num_examples(config, split: str) -> int:
    if config.data.source == "arrays":
        return len(_examples(config, split))
    meta = records.load_meta(config.data.records_dir)
    return int(meta["splits"][split]["num_records"])


def make_dataset(config, split: str, process_index: int, process_count: int, *, tokens_per_video: int):
    """The stage's training batches (a Grain IterDataset with a checkpointable iterator).

    `tokens_per_video`: visual tokens one `<video>` expands to (model.tokens_per_video(config)).
    """
    d = config.data
    local = common.local_data_config(config, process_count, num_visual_tokens=tokens_per_video)
    if d.source == "records":
        return _records_dataset(config, local, split, process_index, process_count)
    if d.source != "arrays":
        raise ValueError(f"config.data.source={d.source!r}; expected 'arrays' or 'records'")
    check_pixel_stats(config, load_arrays(d.arrays))
    recipes = _examples(config, split)
    fn = _ArrayExample(config, tokens_per_video, views(config))
    ds = (grain.MapDataset.source(recipes).shuffle(seed=config.seed + d.shuffle_seed).repeat()
          [process_index::process_count].map(fn))
    if d.get("shift_augment", 0):
        ds = ds.random_map(_Shift(d.shift_augment), seed=config.seed + d.shuffle_seed)
    ds = ds.batch(local.batch_size, drop_remainder=True)
    # As data/pipeline.py: `read_threads` threads build whole batches ahead (grain's default, 16
    # threads and 500 batches ahead, polls its buffer every step: 3x the CPU of building a batch).
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads,
                                                prefetch_buffer_size=max(2, d.read_threads)))


def _records_dataset(config, local, split, process_index, process_count):
    stage = config.exo2ego.stage
    if stage == 1:
        kind, rename = "exo", "exo_pixels"
    elif stage == 3 and local.instructions:
        kind, rename = "instructions", "ego_pixels"
    elif stage == 3:
        kind, rename = "ego", "ego_pixels"
    else:
        kind, rename = "pair", None
    # The pipeline reads only `.data`: hand it this process's copy (per-process batch, tokens per video).
    ds = pipeline.make_dataset(ml_collections.ConfigDict({"data": local}), split, process_index,
                               process_count, kind=kind)
    if rename is None:
        return ds

    def ren(batch):
        batch = dict(batch)
        if "pixels" in batch:
            batch[rename] = batch.pop("pixels")
        return batch
    return ds.map(ren)
