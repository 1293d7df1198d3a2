"""Synthetic ego-exo world written in the Ego-Exo4D layout (job `synthetic_world`).

Each take: an actor at one side of a table performs a short task (keysteps of atomic actions with
one hand) while four static exo cameras (cam01..cam04, one per side) and a head-mounted ego camera
(aria01, rgb stream 214-1) film it at 30 fps, frame-aligned. The world is written exactly as
docs/formats.md section 1 describes a download (takes.json, captures.json, annotations/*.json,
takes/<name>/frame_aligned_videos/*.mp4 and downscaled/448/), plus `synthetic_meta.json` with
the ground truth behind every narration. Deterministic from `seed`. See docs/synthetic_world.md.

python -m exo2ego_jax.main --config configs/data/synthetic.py --workdir DIR
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
import types
import uuid
from typing import Any

import numpy as np

from exo2ego_jax import progress
from exo2ego_jax.synthetic import narration as narration_lib
from exo2ego_jax.synthetic import render as render_lib
from exo2ego_jax.synthetic import scene
from exo2ego_jax.synthetic import tokenizer as tokenizer_lib
from exo2ego_jax.data import video as video_lib
from exo2ego_jax import config_lib

TOKENIZER_DIR = "tokenizer"  # the world's word-level tokenizer, written by job synthetic_world

EGO_CAM = "aria01"
EGO_FILE = "aria01_214-1.mp4"
META_FILE = "synthetic_meta.json"


def world_config():
    """The `config.data` block of the synthetic_world job (also used by tests and demos)."""
    d = config_lib.ConfigDict()
    d.root = ""  # output directory of the world ('' = --workdir)
    d.seed = 0  # world seed: same seed -> same JSON and the same video bytes
    d.num_takes = 160  # takes in the world (the default demo world: ~160 takes of ~5-12 s)
    d.val_fraction = 0.2  # fraction of takes in the val split (the rest are train)
    d.fps = 30  # frame rate of every video (Ego-Exo4D frame-aligned videos are 30 fps)
    d.exo_size = (160, 90)  # exo video (width, height), 16:9 like the GoPro exo cameras
    d.ego_size = 112  # ego video side (square, like the Aria RGB camera)
    d.exo_focal = 1.1  # exo focal length in units of the image width
    d.ego_focal = 1.5  # ego focal length in units of the image side (narrow: hands and object big)
    # Per exo camera cam01..cam04: (azimuth deg from +x, elevation deg, distance from the table centre);
    # chosen so every camera sees the whole table and the actor at any side.
    d.exo_poses = ((-80.0, 25.0, 3.3), (8.0, 30.0, 4.0), (95.0, 35.0, 4.2), (172.0, 28.0, 3.9))
    d.exo_look_height = 0.25  # height above the table of the point every exo camera looks at
    d.ego_head_height = 0.75  # ego camera height above the table top
    d.ego_lean = 0.35  # fraction of the way the head leans towards the gaze point
    d.ego_gaze_smoothing = 0.15  # per-frame blend of the gaze towards the active hand/object
    d.ego_look_hand = 1.0  # how far the gaze turns from straight ahead to the acting hand (1 = all the way)
    d.p_hand_near_object = 0.0  # chance an action uses the hand on the object's side (0 = hands at random)
    # (left, right) hand colours; () or an empty entry = bare skin. A glove on one hand tells the hands
    # apart by colour from any camera, without the viewpoint geometry of "left of the actor".
    d.hand_rgb = ()
    d.action_seconds = (0.9, 1.5)  # duration range of one atomic action
    d.pause_seconds = (0.1, 0.4)  # pause range before each action
    d.lead_seconds = 0.5  # idle time at the start and the end of a take
    d.min_objects = 3  # objects on the table per take (min)
    d.max_objects = 5  # objects on the table per take (max)
    d.min_relocations = 2  # "Tidying the Table": objects moved (min)
    d.max_relocations = 3  # "Tidying the Table": objects moved (max)
    d.colours = tuple(scene.COLOURS)  # object colours to draw from
    d.shapes = scene.SHAPES  # object shapes to draw from
    d.object_scale = 1.0  # multiplies every object's size and spacing (1.0: cups ~13 cm wide)
    d.markings = scene.MARKINGS  # small ego-only markings to draw from ("none" = plain)
    d.p_mention_marking = 0.3  # chance a narration mentions the object's marking (ego-favoured)
    d.p_mention_other_hand = 0.3  # chance a narration mentions the other hand (exo-favoured)
    d.p_mention_side = 0.15  # chance a narration mentions where the actor stands (exo-favoured)
    d.floor_tint_range = (90.0, 150.0)  # per-take floor RGB tint drawn from [lo, hi] (lo == hi: one tint for all)
    d.crf = 24  # x264 quality (Ego-Exo4D frame-aligned videos: crf 24, docs/formats.md 1.4)
    d.gop = 30  # keyframe interval in frames (short: cheap seeks to clips)
    d.preset = "veryfast"  # x264 preset (speed vs size; does not change decoded content much)
    d.write_448 = True  # also write downscaled/448 (videos are < 448 px already: hard links)
    d.num_workers = 2  # processes rendering takes in parallel (0 = in-process)
    return d


def _uid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _fav_entry(cam: str, stream_id: str, readable: str, clip_uid: str, rel: str) -> dict[str, Any]:
    return {"cam_id": cam, "stream_id": stream_id, "readable_stream_id": readable, "clip_uid": clip_uid,
            "relative_path": rel}


def make_take(index: int, cfg: Any, root: str) -> dict[str, Any]:
    """Simulates, renders and encodes take `index`; returns its JSON pieces (no shared state)."""
    rng = np.random.default_rng([cfg.seed, index])
    ids = np.random.default_rng([cfg.seed, index, 1])
    state = scene.simulate_take(rng, cfg)
    narrs = narration_lib.narrations(state, rng, cfg)
    name = f"synth_{scene.TASKS[state.task]['slug']}_{index:04d}"
    take_uid, capture_uid = _uid(ids), _uid(ids)
    take_dir = os.path.join(root, "takes", name)
    video_dir = os.path.join(take_dir, "frame_aligned_videos")
    os.makedirs(video_dir, exist_ok=True)

    T = state.num_frames
    lo, hi = getattr(cfg, "floor_tint_range", (90.0, 150.0))
    tint = np.asarray(rng.uniform(lo, hi, size=3), np.float32)  # drawn even when lo == hi: same rng stream
    exo = render_lib.exo_cameras(cfg)
    ego_cams = [render_lib.ego_camera(state, f, cfg) for f in range(T)]  # the head moves: one per frame
    views = [(cam, render_lib.background(cam, tint), False) for cam in exo.values()]
    *exo_frames, ego_frames = render_lib.render_views(
        state, views + [(ego_cams, render_lib.backgrounds(ego_cams, tint), True)])
    files: dict[str, str] = {}
    for cam_id, frames in zip(exo, exo_frames):
        files[cam_id] = f"{cam_id}.mp4"
        video_lib.encode_mp4(frames, os.path.join(video_dir, files[cam_id]), fps=cfg.fps, crf=cfg.crf,
                             preset=cfg.preset, gop=cfg.gop)
    files[EGO_CAM] = EGO_FILE
    video_lib.encode_mp4(ego_frames, os.path.join(video_dir, EGO_FILE), fps=cfg.fps, crf=cfg.crf,
                         preset=cfg.preset, gop=cfg.gop)
    if cfg.write_448:
        # Downscaling to 448 px on the shorter side never upscales: our videos are smaller, so the
        # 448 variant holds the same files (hard links when the file system allows).
        small = os.path.join(video_dir, "downscaled", "448")
        os.makedirs(small, exist_ok=True)
        for f in files.values():
            dst = os.path.join(small, f)
            if os.path.exists(dst):
                os.remove(dst)
            try:
                os.link(os.path.join(video_dir, f), dst)
            except OSError:
                shutil.copyfile(os.path.join(video_dir, f), dst)

    fav = {EGO_CAM: {"rgb": _fav_entry(EGO_CAM, "214-1", "rgb", _uid(ids), f"frame_aligned_videos/{EGO_FILE}")}}
    for cam_id in exo:
        fav[cam_id] = {"0": _fav_entry(cam_id, "0", "0", _uid(ids), f"frame_aligned_videos/{cam_id}.mp4")}
    fav["best_exo"] = {"0": {"clip_uid": None, "stream_id": "0", "readable_stream_id": "0", "relative_path": None}}
    duration = round(T / cfg.fps, 4)
    best = narration_lib.BEST_EXO[state.side]
    capture = {"capture_uid": capture_uid, "capture_name": f"synth_capture_{index:04d}",
               "root_dir": f"captures/synth_capture_{index:04d}", "university_name": "synthu",
               "physical_setting_uid": 1, "has_trajectory": False, "has_gaze": False,
               "cameras": [{"cam_id": EGO_CAM, "is_ego": True, "device_type": "aria",
                            "relative_path": f"videos/{EGO_CAM}.vrs"}]
               + [{"cam_id": c, "is_ego": False, "device_type": "hero10", "relative_path": f"videos/{c}.mp4"}
                  for c in exo]}
    task = scene.TASKS[state.task]
    take = {"take_uid": take_uid, "take_name": name, "root_dir": f"takes/{name}", "task_id": task["task_id"],
            "task_name": state.task, "parent_task_id": scene.PARENT_TASK[1], "parent_task_name": scene.PARENT_TASK[0],
            "university_name": "synthu", "duration_sec": duration,
            "task_start_sec": round(state.actions[0].t0 / cfg.fps, 4),
            "task_end_sec": round(state.actions[-1].t1 / cfg.fps, 4), "best_exo": best, "is_narrated": False,
            "is_dropped": False, "validated": True, "take_idx": index, "timesync_start_idx": 0,
            "timesync_end_idx": T, "participant_uid": index % 17, "physical_setting_uid": 1, "objects": [],
            "capture_uid": capture_uid, "capture": capture, "frame_aligned_videos": fav}
    descriptions = [{"text": n["text"], "timestamp": n["timestamp"], "narration_subject": "C", "ego_visible": True,
                     "unsure": False, "best_exo": {"raw_cam_id": str(int(best[3:])), "cam_id": best}} for n in narrs]
    atomic = [{"annotation_uid": _uid(ids), "annotator_id": "synth", "rejected": False, "reject_reason": None,
               "descriptions": descriptions}]
    segments, meta_steps = [], []
    for si, (step_name, desc, acts) in enumerate(state.steps):
        a0, a1 = state.actions[acts[0]], state.actions[acts[-1]]
        segments.append({"start_time": round(a0.t0 / cfg.fps, 4), "end_time": round(a1.t1 / cfg.fps, 4),
                         "step_id": task["steps"].index(step_name) + 1,
                         "step_unique_id": scene.step_unique_id(state.task, step_name), "step_name": step_name,
                         "step_description": desc, "is_essential": True})
        meta_steps.append({"index": si, "step_name": step_name, "description": desc,
                           "start": segments[-1]["start_time"], "end": segments[-1]["end_time"],
                           "actions": acts, "verbs": [state.actions[i].verb for i in acts]})
    keystep = {"take_uid": take_uid, "take_name": name, "scenario": state.task,
               "annotation_meta": {"annotation_uid": _uid(ids), "annotator_id": 0, "response_time": 0},
               "segments": segments}
    meta = {"take_name": name, "task": state.task, "actor_side": state.side, "best_exo_cam": best,
            "shirt_rgb": list(state.shirt), "num_frames": T, "duration_sec": duration,
            "objects": [{"id": k, "colour": o.colour, "shape": o.shape, "marking": o.marking,
                         "marking_colour": o.marking_colour, "initial_xy": [round(v, 4) for v in o.xy]}
                        for k, o in enumerate(state.objects)],
            "narrations": narrs, "keysteps": meta_steps}
    return {"take": take, "capture": capture, "atomic": atomic, "keystep": keystep, "meta": meta,
            "num_frames": T}


def _taxonomy() -> tuple[dict[str, Any], dict[str, str]]:
    taxonomy, vocab = {}, {}
    for task, spec in scene.TASKS.items():
        nodes = {"0": {"id": 0, "is_leafnode": False, "name": task, "parent_id": None, "parent_name": None}}
        for i, step in enumerate(spec["steps"], start=1):
            uid = scene.step_unique_id(task, step)
            nodes[str(i)] = {"id": i, "is_leafnode": True, "name": step, "parent_id": 0, "parent_name": task,
                             "unique_id": uid}
            vocab[str(uid)] = step
        taxonomy[task] = nodes
    return taxonomy, vocab


def _worker(args: tuple[int, dict[str, Any], str]) -> dict[str, Any]:
    index, cfg, root = args
    return make_take(index, types.SimpleNamespace(**cfg), root)


def _dump(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)


def write_world(cfg: Any, root: str) -> dict[str, Any]:
    """Writes the world described by `cfg` (world_config() fields) under `root`; returns a summary."""
    t_start = time.perf_counter()
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    cfg_dict = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, (list, tuple)) else v
                for k, v in cfg_dict.items()}
    if cfg_dict["num_takes"] <= 0:
        raise ValueError(f"config.data.num_takes must be > 0, got {cfg_dict['num_takes']}")
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    n = int(cfg_dict["num_takes"])
    jobs = [(i, cfg_dict, root) for i in range(n)]
    if cfg_dict["num_workers"] > 0 and n > 1:
        # spawn: the caller may already run JAX threads, which fork would copy in a broken state.
        with multiprocessing.get_context("spawn").Pool(min(cfg_dict["num_workers"], n)) as pool:
            results = list(progress.bar(pool.imap(_worker, jobs, chunksize=1), total=n, desc="world takes",
                                        unit="take"))
    else:
        results = [_worker(j) for j in progress.bar(jobs, desc="world takes", unit="take")]

    perm = np.random.default_rng([cfg_dict["seed"], 1 << 30]).permutation(n)
    num_val = int(round(cfg_dict["val_fraction"] * n))
    split_of = {int(i): ("val" if r < num_val else "train") for r, i in enumerate(perm)}
    takes = [r["take"] for r in results]
    uid_split = {r["take"]["take_uid"]: split_of[i] for i, r in enumerate(results)}
    _dump(os.path.join(root, "takes.json"), takes)
    _dump(os.path.join(root, "captures.json"), [r["capture"] for r in results])
    _dump(os.path.join(root, "annotations", "splits.json"), {
        "take_uid_to_split": uid_split,
        "split_to_take_uids": {s: [u for u, v in uid_split.items() if v == s] for s in ("train", "val", "test")},
        "take_uid_to_benchmark": {u: ["atomic_action_descriptions", "keystep"] for u in uid_split}})
    taxonomy, vocab = _taxonomy()
    for split in ("train", "val"):
        sel = [r for r in results if uid_split[r["take"]["take_uid"]] == split]
        _dump(os.path.join(root, "annotations", f"atomic_descriptions_{split}.json"),
              {"ds": "synthetic", "annotations": {r["take"]["take_uid"]: r["atomic"] for r in sel}})
        _dump(os.path.join(root, "annotations", f"keystep_{split}.json"),
              {"annotations": {r["take"]["take_uid"]: r["keystep"] for r in sel}, "taxonomy": taxonomy,
               "vocabulary": vocab})
    exo = render_lib.exo_cameras(types.SimpleNamespace(**cfg_dict))
    _dump(os.path.join(root, META_FILE), {
        "format": "exo2ego_jax synthetic ego-exo world", "version": 1, "config": cfg_dict,
        "cameras": {"ego": EGO_CAM, "exo": {c: {"position": [round(float(v), 3) for v in cam.pos]}
                                           for c, cam in exo.items()},
                    "best_exo_by_actor_side": narration_lib.BEST_EXO},
        "takes": {r["take"]["take_uid"]: {**r["meta"], "split": uid_split[r["take"]["take_uid"]]} for r in results}})

    seconds = time.perf_counter() - t_start
    frames = sum(r["num_frames"] for r in results)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs
               if "downscaled" not in d)
    summary = {"takes": n, "train_takes": n - num_val, "val_takes": num_val,
               "narrations": sum(len(r["meta"]["narrations"]) for r in results),
               "keysteps": sum(len(r["meta"]["keysteps"]) for r in results),
               "frames_per_view": frames, "hours_per_view": frames / cfg_dict["fps"] / 3600,
               "videos": 5 * n, "bytes": size, "seconds": seconds, "takes_per_sec": n / seconds}
    return summary


def run(config, workdir: str) -> dict[str, Any]:
    """Job `synthetic_world`: writes the world to config.data.root (or workdir) and prints its size."""
    root = config.data.root or workdir
    summary = write_world(config.data, root)
    # The world's own word-level tokenizer (a pretrained LLM's vocabulary would dwarf a tiny model):
    # point `config.data.tokenizer` of a training config at it.
    summary["tokenizer"] = tokenizer_lib.build_tokenizer(tokenizer_lib.world_texts(root),
                                                         os.path.join(root, TOKENIZER_DIR))
    msg = (f"synthetic_world: wrote {summary['takes']} takes ({summary['train_takes']} train / "
           f"{summary['val_takes']} val), {summary['narrations']} narrations, {summary['keysteps']} keysteps, "
           f"{summary['videos']} videos, {summary['frames_per_view']} frames per view "
           f"({summary['hours_per_view'] * 60:.1f} min), {summary['bytes'] / 2 ** 20:.1f} MiB to {root} in "
           f"{summary['seconds']:.1f} s ({summary['takes_per_sec']:.2f} takes/s)")
    print(msg + f"; tokenizer in {summary['tokenizer']}")
    return summary
