"""Shared fixtures of the records/pipeline tests: a tiny Ego-Exo4D layout and a word tokenizer.

The world has real H.264 files (64x64, 30 fps). Frame i of camera c has the colour
(8 * i mod 256, 40 * c, 128), so a test can tell which camera and frame a pixel came from.
Take "t1" (train) has ego + 2 exo views and 4 narrations (one outside the video), take "t2"
(train) has ego + 1 exo view whose second exo file is missing, take "t3" (train) has no exo
views, take "t4" (val) has ego + 1 exo view.
"""
from __future__ import annotations

import json
import os

import numpy as np

from exo2ego_jax.synthetic import tokenizer as synthetic_tokenizer
from exo2ego_jax.data.video import encode_mp4
from helpers import load_config

NUM_FRAMES = 60  # 2 s at 30 fps
SIZE = 64
UID = "00000000-0000-4000-8000-00000000000{}".format


def cam_frames(cam_index: int, n: int = NUM_FRAMES) -> np.ndarray:
    frames = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    frames[..., 0] = ((8 * np.arange(n)) % 256)[:, None, None]
    frames[..., 1] = 40 * cam_index
    frames[..., 2] = 128
    return frames


def _take(i: int, exo: list[str], split: str) -> dict:
    name = f"synth_t{i}"
    fav = {"aria01": {"rgb": {"cam_id": "aria01", "stream_id": "214-1", "readable_stream_id": "rgb",
                              "relative_path": "frame_aligned_videos/aria01_214-1.mp4"}},
           "collage": {"0": {"relative_path": "ego_preview.mp4"}}}
    for cam in exo:
        fav[cam] = {"0": {"cam_id": cam, "stream_id": "0", "relative_path": f"frame_aligned_videos/{cam}.mp4"}}
    cameras = [{"cam_id": "aria01", "is_ego": True}] + [{"cam_id": c, "is_ego": False} for c in exo]
    return {"take_uid": UID(i), "take_name": name, "root_dir": f"takes/{name}", "task_name": "Making Tea",
            "parent_task_name": "Cooking", "duration_sec": NUM_FRAMES / 30, "frame_aligned_videos": fav,
            "capture": {"cameras": cameras}}


def make_world(root: str) -> str:
    """Writes the tiny world under ``root`` and returns it."""
    takes = [_take(1, ["cam01", "cam02"], "train"), _take(2, ["cam01", "cam02"], "train"),
             _take(3, [], "train"), _take(4, ["cam01"], "val")]
    splits = {"take_uid_to_split": {UID(1): "train", UID(2): "train", UID(3): "train", UID(4): "val"}}
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for take in takes:
        vdir = os.path.join(root, take["root_dir"], "frame_aligned_videos")
        os.makedirs(vdir, exist_ok=True)
        for c, cam in enumerate(["aria01", "cam01", "cam02"]):
            if cam != "aria01" and cam not in take["frame_aligned_videos"]:
                continue
            if take["take_name"] == "synth_t2" and cam == "cam02":
                continue  # missing exo file
            fname = "aria01_214-1.mp4" if cam == "aria01" else f"{cam}.mp4"
            encode_mp4(cam_frames(c), os.path.join(vdir, fname), fps=30, gop=10)

    def desc(text, ts):
        return {"text": text, "timestamp": ts, "narration_subject": "C", "ego_visible": True,
                "unsure": False, "best_exo": {"cam_id": "cam01"}}

    atomic_train = {"annotations": {
        UID(1): [{"annotation_uid": "a1", "rejected": False, "descriptions": [
            desc("C picks up the kettle.", 0.3), desc("C pours water into the cup.", 0.9),
            desc("C puts down the kettle.", 1.5), desc("C leaves the room.", 9.0)]}],
        UID(2): [{"annotation_uid": "a2", "rejected": False, "descriptions": [
            desc("C opens the fridge.", 1.0)]}],
        UID(3): [{"annotation_uid": "a3", "rejected": False, "descriptions": [
            desc("C cuts the onion.", 1.0)]}]}}
    atomic_val = {"annotations": {UID(4): [{"annotation_uid": "a4", "rejected": False, "descriptions": [
        desc("C stirs the tea.", 1.0)]}]}}
    seg = {"start_time": 0.2, "end_time": 1.8, "step_id": 2, "step_unique_id": 900, "step_name": "Boil water",
           "step_description": "Fill the kettle and switch it on", "is_essential": True}
    keystep = {"annotations": {UID(1): {"take_uid": UID(1), "segments": [seg]}}, "taxonomy": {}, "vocabulary": {}}
    files = {"takes.json": takes, "annotations/splits.json": splits,
             "annotations/atomic_descriptions_train.json": atomic_train,
             "annotations/atomic_descriptions_val.json": atomic_val,
             "annotations/keystep_train.json": keystep,
             "annotations/keystep_val.json": {"annotations": {}, "taxonomy": {}, "vocabulary": {}}}
    for rel, obj in files.items():
        with open(os.path.join(root, rel), "w") as f:
            json.dump(obj, f)
    return root


def make_tokenizer(root: str):
    """The synthetic word-level tokenizer over the world's texts, loaded with AutoTokenizer."""
    from transformers import AutoTokenizer

    out = os.path.join(root, "tokenizer")
    synthetic_tokenizer.build_tokenizer(synthetic_tokenizer.world_texts(root), out)
    return AutoTokenizer.from_pretrained(out)


def records_config(root: str, **overrides):
    """build_records data config for the tiny world (full-size videos, in-process)."""
    cfg = load_config("configs/data/records.py")
    cfg.data.root = root
    cfg.data.video_variant = "full"
    cfg.data.max_skip_fraction = 0.9
    for k, v in overrides.items():
        setattr(cfg.data, k, v)
    return cfg
