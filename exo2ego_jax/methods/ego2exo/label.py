"""Job "label": a frozen video MLLM (the teacher) answers Ego2ExoVLM's questions on EGO keystep segments.

    python -m exo2ego_jax.main --config configs/ego2exo/label.py --workdir DIR \
        --config.label.root=/data/egoexo4d --config.label.teacher_workdir=/ckpt/teacher

For every keystep segment of `config.label.split` (Ego2ExoVLM paper [C]):
- 3 questions, one per category (descriptive / temporal / spatial), drawn from the 12 templates
  with a seed that depends only on (label.seed, segment id);
- the teacher sees the EGO video of the segment (1 fps, at most 180 frames) and answers greedily
  (up to 1024 new tokens) under the system prompt "You are a helpful assistant.";
- each (question, answer) is paired with ONE synchronised EXO camera of the same take, drawn from
  (label.seed, segment id, category), and written as a LLaVA-style sample:
  {"id", "video": <exo mp4 relative to label.root>, "start", "end", "conversations": [...], ...}.

Resumable: finished segments are appended to `DIR/label_progress[.<i>-of-<n>].jsonl` after every
batch; a restarted job skips them. `DIR/<label.output>` (LLaVA JSON) is rewritten at the end.
Generation is batched and sharded over the local devices (data axes of config.hardware's mesh);
with several processes (a pod), each labels every n-th segment on its own devices and process 0
merges the parts after a barrier.

The teacher is a trainer workdir (`label.teacher_workdir`: its saved config + checkpoint), a
VideoLLaMA3 checkpoint directory (`model.arch = "videollama3"`, `model.checkpoint`; the authors'
VideoLLaMA3-7B teacher, methods/ego2exo/videollama3_teacher.py), or the SigLIP / LLaVA-Video stack
with HF weights (`model.arch = "llava_video"`, `model.llm_hf` / `vision_hf` / `connector_hf`).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from exo2ego_jax import config_lib
from exo2ego_jax import progress
from exo2ego_jax.data.egoexo4d import EgoExo4D
from exo2ego_jax.data.skips import SkipCounter
from exo2ego_jax.eval.records import VideoRef
from exo2ego_jax.methods.ego2exo import prompts as prompts_lib
from exo2ego_jax.data import pipeline
from exo2ego_jax.methods.ego2exo import model as ego2exo_model
from exo2ego_jax.methods.ego2exo import infer as ego2exo_infer
from exo2ego_jax.methods.ego2exo import videollama3_teacher
from exo2ego_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class Segment:
    segment_id: str  # "<take_name>_seg<index:04d>", the Ego-in-Exo naming
    take_uid: str
    take_name: str
    start: float
    end: float
    ego_path: str
    exo_paths: dict[str, str]  # cam_id -> path (only files that exist)
    best_exo: str | None = None  # most common `best_exo` camera of the segment's narrations (None: unknown)


def segments_to_label(ds: EgoExo4D, split: str, *, best_exo: bool = False,
                      skips: SkipCounter | None = None) -> list[Segment]:
    """Keystep segments of `split` whose take has an ego video and >= 1 exo video, in a fixed order.

    Videos come from `ds.video_variant`; a take without that variant (e.g. no downscaled/448 copy)
    falls back to its full-size videos (logged). Every keystep counts as seen in `skips` (default
    `ds.skips`), each one without usable videos as skipped.
    best_exo: also read the atomic descriptions of `split` for each segment's `best_exo` camera."""
    skips = ds.skips if skips is None else skips
    out = []
    best: dict[str, list] = {}
    full_size: set[str] = set()  # takes read at full size because their video_variant copy is absent
    for n in (ds.narrations(split) if best_exo else []):
        best.setdefault(n.take_uid, []).append(n)
    for ks in ds.keysteps(split):
        skips.seen()
        take = ds.takes[ks.take_uid]
        ego = _video_file(ds, ks.take_uid, take.ego_cam, full_size) if take.ego_cam else None
        exo = {cam: p for cam in take.exo_cams if (p := _video_file(ds, ks.take_uid, cam, full_size))}
        if ego is None or not exo:
            skips.skip("missing_video" if ego is None else "no_exo_views", take.root,
                       f"segment {ks.index} of {take.take_name}: no {ds.video_variant} or full-size "
                       f"{'ego' if ego is None else 'exo'} video")
            continue
        out.append(Segment(f"{take.take_name}_seg{ks.index:04d}", ks.take_uid, take.take_name, ks.start, ks.end,
                           ego, exo, _best_exo(best.get(ks.take_uid, []), ks.start, ks.end, exo)))
    if full_size:
        logging.warning("label: %d takes have no %s videos; reading their full-size videos instead (e.g. %s)",
                        len(full_size), ds.video_variant, sorted(full_size)[:3])
    return sorted(out, key=lambda s: s.segment_id)


def _video_file(ds: EgoExo4D, take_uid: str, cam: str, full_size: set[str]) -> str | None:
    """The camera's video in ds.video_variant, else its full-size video (take name added to
    `full_size`), else None."""
    try:
        path = ds.video_path(take_uid, cam)
    except KeyError:
        path = ""
    if path and os.path.exists(path):
        return path
    take = ds.takes[take_uid]
    full = take.videos.get(cam, "")
    if ds.video_variant != "full" and full and os.path.exists(full):
        full_size.add(take.take_name)
        return full
    return None


def _best_exo(narrs: list, start: float, end: float, exo: dict[str, str]) -> str | None:
    """The exo camera the segment's narrations most often name as `best_exo` (ties: first by cam id)."""
    votes = collections.Counter(n.best_exo_cam for n in narrs
                                if start <= n.timestamp <= end and n.best_exo_cam in exo)
    return min(votes, key=lambda c: (-votes[c], c)) if votes else None


def pick_exo_view(seg: Segment, key: str, seed: int, mode: str = "random") -> str:
    """The exo camera an answer is paired with: "random" (drawn from (seed, key)) or "best" (the
    segment's best_exo camera, falling back to the random draw when the annotations name none)."""
    if mode not in ("random", "best"):
        raise ValueError(f"config.label.exo_view={mode!r}: expected 'random' or 'best'")
    if mode == "best" and seg.best_exo is not None:
        return seg.best_exo
    return prompts_lib.choose_exo_view(key, list(seg.exo_paths), seed)


def segment_records(seg: Segment, questions: list[tuple[str, str]], answers: list[str], *, root: str,
                    seed: int, teacher: str, exo_view: str = "random") -> list[dict[str, Any]]:
    """The LLaVA samples of one segment: each answer paired with one exo view (`pick_exo_view`)."""
    recs = []
    for (cat, q), a in zip(questions, answers):
        cam = pick_exo_view(seg, f"{seg.segment_id}/{cat}", seed, exo_view)
        recs.append(prompts_lib.llava_record(
            record_id=f"{seg.segment_id}_{cat}", video=os.path.relpath(seg.exo_paths[cam], root), question=q,
            answer=a, extra={"start": seg.start, "end": seg.end, "take_uid": seg.take_uid,
                             "take_name": seg.take_name, "segment_id": seg.segment_id, "category": cat,
                             "exo_cam": cam, "ego_video": os.path.relpath(seg.ego_path, root),
                             "teacher": teacher}))
    return recs


TEACHER_ARCHS = ("videollama3", "llava_video")


def _check_fps_sampling(lb) -> None:
    if lb.sampling != "fps":
        raise ValueError(f"config.label.sampling={lb.sampling!r}: the VideoLLaMA3 teacher samples at "
                         "label.sample_fps with the label.max_frames cap (its processor's rule); set it to 'fps'")


def teacher_runner(config, mesh):
    """(runner, teacher description) for config.label's teacher on `mesh`.

    A trainer workdir (label.teacher_workdir) is read with its saved config; otherwise
    config.model.arch picks the checkpoint kind: "videollama3" (the authors' teacher,
    config.model.checkpoint = a VideoLLaMA3 directory) or "llava_video" (SigLIP + projector + Qwen2
    from model.llm_hf / vision_hf / connector_hf, or random init)."""
    lb = config.label
    arch = config.model.get("arch", "llava_video")  # configs saved before the field: the SigLIP stack
    if arch not in TEACHER_ARCHS:
        raise ValueError(f"config.model.arch={arch!r}: the labelling teacher is one of {TEACHER_ARCHS}")
    if not lb.teacher_workdir and arch == "videollama3":
        _check_fps_sampling(lb)
        if not config.model.checkpoint:
            raise ValueError("config.model.arch='videollama3' needs config.model.checkpoint: a VideoLLaMA3 "
                             "directory (e.g. DAMO-NLP-SG/VideoLLaMA3-7B or its transformers conversion)")
        hw = config.hardware
        teacher = videollama3_teacher.VideoLlama3Teacher.load(
            config.model.checkpoint, tokenizer=config.data.tokenizer, fps=lb.sample_fps, max_frames=lb.max_frames,
            system_prompt=lb.system_prompt, max_new_tokens=lb.max_new_tokens, dtype=hw.compute_dtype,
            param_dtype=hw.param_dtype, mesh=mesh, attention_impl=hw.attention,
            unroll_layers=config_lib.unroll_layers(hw))
        return teacher, config.model.checkpoint
    if lb.teacher_workdir:
        cfg = ego2exo_infer.load_run_config(lb.teacher_workdir)
        ego2exo_infer.tupleize_groups(cfg)
        cfg.train.init_from = lb.teacher_workdir
        name = lb.teacher_workdir
    else:
        cfg = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
        cfg.train.init_from = ""
        name = config.model.llm_hf or "config.model (random init)"
    cfg.hardware = ml_collections.ConfigDict(config.hardware.to_dict())
    if cfg.model.get("arch", "llava_video") == "videollama3":  # a VideoLLaMA3 run trained with this repo
        _check_fps_sampling(lb)
        cfg.model.num_probes = 0  # the teacher answers without EAVT probes
        model, _ = ego2exo_infer.build_inference_model(cfg, mesh=mesh)
        teacher = videollama3_teacher.VideoLlama3Teacher.from_model(
            model, cfg, fps=lb.sample_fps, max_frames=lb.max_frames, system_prompt=lb.system_prompt,
            max_new_tokens=lb.max_new_tokens, mesh=mesh)
        return teacher, name
    # Ego2ExoVLM [C]: the teacher sees the segment at label.sample_fps, at most label.max_frames.
    cfg.data.sampling = lb.sampling
    cfg.data.sample_fps = lb.sample_fps
    cfg.data.num_frames = lb.max_frames
    if cfg.method == "ego2exo":
        ego2exo_model.sync_data_fields(cfg)
    model, _ = ego2exo_infer.build_inference_model(cfg, mesh=mesh)
    tok = pipeline.load_tokenizer(cfg.data)
    runner = ego2exo_infer.VideoLLMRunner(model, tok, cfg.data, system_prompt=lb.system_prompt,
                                          prompt_len=lb.prompt_len, mesh=mesh)
    return runner, name


def frame_count(seg: Segment, lb) -> int:
    """Frames the teacher sees for `seg`: label.sample_fps over the segment, capped at max_frames and
    rounded up to the next of label.frame_buckets (static shapes: one compile per bucket, and short
    segments are not padded with black frames up to 180); "uniform" sampling: always max_frames."""
    if lb.sampling != "fps":
        return int(lb.max_frames)
    n = max(1, min(int(lb.max_frames), math.ceil((seg.end - seg.start) * lb.sample_fps)))
    return next((min(int(b), int(lb.max_frames)) for b in sorted(lb.frame_buckets) if b >= n), int(lb.max_frames))


def _paths(workdir: str, lb, shard: int, num_shards: int) -> tuple[str, str]:
    suffix = "" if num_shards == 1 else f".{shard}-of-{num_shards}"
    return (os.path.join(workdir, f"label_progress{suffix}.jsonl"),
            os.path.join(workdir, lb.output))


def label(config, workdir: str) -> dict[str, Any]:
    """Labels every keystep segment of config.label.split; see the module docstring."""
    lb = config.label
    if not lb.root:
        raise ValueError("config.label.root is empty: set it to the Ego-Exo4D (or synthetic world) directory")
    os.makedirs(workdir, exist_ok=True)
    shard, num_shards = jax.process_index(), jax.process_count()
    progress_path, out_path = _paths(workdir, lb, shard, num_shards)
    ds = EgoExo4D(lb.root, video_variant=lb.video_variant)
    exo_view = lb.get("exo_view", "random")  # configs saved before the field existed: the paper's draw
    seg_skips = SkipCounter(config_field="config.data.max_skip_fraction")
    all_segments = segments_to_label(ds, lb.split, best_exo=exo_view == "best", skips=seg_skips)
    if not all_segments and not seg_skips.num_skipped:
        raise ValueError(f"label: {lb.root} has no keystep segments in split {lb.split!r} "
                         f"(annotations/keystep_{lb.split.lower()}.json); set --config.label.split")
    seg_skips.check(config.data.max_skip_fraction)  # every segment skipped: TooManySkipped, naming why
    if lb.max_segments:
        all_segments = all_segments[: lb.max_segments]
    mine = all_segments[shard::num_shards]
    done = prompts_lib.read_progress(progress_path)
    todo = [s for s in mine if s.segment_id not in done]
    logging.info("label: %d segments in %s/%s (%d on this process), %d already done, %d to label; "
                 "segments: %s; takes: %s", len(all_segments), lb.root, lb.split, len(mine),
                 len(mine) - len(todo), len(todo), seg_skips.report(), ds.skips.report())

    stats = {"segments": len(all_segments), "skipped_done": len(mine) - len(todo), "labelled": 0,
             "new_tokens": 0, "generate_seconds": 0.0}
    if todo:
        mesh = mesh_lib.make_mesh(config.hardware, jax.local_devices())
        runner, teacher = teacher_runner(config, mesh)
        dp = mesh.shape["data"] * mesh.shape["fsdp"]
        per_seg = lb.questions_per_segment
        if per_seg != len(prompts_lib.CATEGORIES):
            raise ValueError(f"config.label.questions_per_segment={per_seg}: Ego2ExoVLM asks one question per "
                             f"category, i.e. {len(prompts_lib.CATEGORIES)}")
        segs_per_batch = max(1, lb.batch_size // per_seg)
        rows = math.ceil(segs_per_batch * per_seg / dp) * dp  # static, divisible by the data axes
        # Segments grouped by the number of frames the teacher sees (one runner / compile per group).
        groups: dict[int, list[Segment]] = {}
        for s in todo:
            groups.setdefault(frame_count(s, lb), []).append(s)
        runners = {f: runner.with_frames(f) for f in groups}
        batches = [(f, segs[i:i + segs_per_batch]) for f, segs in sorted(groups.items())
                   for i in range(0, len(segs), segs_per_batch)]
        bar = progress.bar(total=len(mine), initial=len(mine) - len(todo), unit="seg", desc="label")
        try:
            for frames, chunk in batches:
                qs = [prompts_lib.segment_questions(s.segment_id, lb.seed) for s in chunk]
                prompts = [q for seg_qs in qs for _, q in seg_qs]
                refs = [VideoRef(s.ego_path, s.start, s.end) for s in chunk for _ in range(per_seg)]
                n_real = len(prompts)
                prompts += [prompts[-1]] * (rows - n_real)
                refs += [refs[-1]] * (rows - n_real)
                t0 = time.perf_counter()
                texts, lengths = runners[frames].generate(prompts, refs, max_new_tokens=lb.max_new_tokens,
                                                          stop_strings=tuple(lb.stop_strings))
                dt = time.perf_counter() - t0
                entries = []
                for j, seg in enumerate(chunk):
                    answers = texts[j * per_seg:(j + 1) * per_seg]
                    entries.append((seg.segment_id, segment_records(seg, qs[j], answers, root=lb.root,
                                                                    seed=lb.seed, teacher=teacher,
                                                                    exo_view=exo_view)))
                prompts_lib.append_progress(progress_path, entries)
                done.update(entries)
                stats["labelled"] += len(chunk)
                stats["new_tokens"] += int(np.sum(lengths[:n_real]))
                stats["generate_seconds"] += dt
                bar.update(len(chunk))
                bar.set_postfix(tok_s=f"{stats['new_tokens'] / max(stats['generate_seconds'], 1e-9):.1f}")
        finally:
            bar.close()
    stats["tokens_per_sec"] = stats["new_tokens"] / max(stats["generate_seconds"], 1e-9)

    if num_shards > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("label: all shards finished")
        for k in range(num_shards):
            if k != shard:
                done.update(prompts_lib.read_progress(_paths(workdir, lb, k, num_shards)[0]))
    if jax.process_index() == 0:
        order = [s.segment_id for s in all_segments]
        missing = [s for s in order if s not in done]
        if missing:
            raise RuntimeError(f"label: {len(missing)} segments have no answers after labelling "
                               f"(e.g. {missing[:3]}); rerun the job to finish them")
        stats["records"] = prompts_lib.write_llava_json(out_path, done, order)
        print(f"label: wrote {stats['records']} samples for {len(order)} segments to {out_path} "
              f"({stats['labelled']} segments labelled now, {stats['skipped_done']} already done, "
              f"{stats['tokens_per_sec']:.1f} new tokens/s)", flush=True)
    return stats
