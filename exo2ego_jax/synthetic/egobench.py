"""Synthetic EgoBench: ego-view multiple-choice questions from a synthetic world's takes.

Questions come from the ground truth in ``synthetic_meta.json`` (synthetic/world.py), one set per
atomic action (narration) of the chosen split, asked about the EGO clip of that action:

- ``object``: "Which object did I just <verb>?" -> the manipulated object ("the purple box").
- ``hand``: "Which hand did I use just now?" -> "the left hand" / "the right hand".
- ``next``: "What do I do next?" -> the next action ("pick up the orange box"); skipped for the
  last action of a take.
- ``verb``: "What did I just do with the <object>?" -> the verb ("open").

``distractors`` picks the wrong answers:

- ``"take"`` (default): other objects / actions of the same take first, then any plausible one.
  A language prior answers part of these (only bottles and boxes can be opened, scripts fix what
  follows what).
- ``"balanced"``: every option is equally plausible a priori, so only the video can answer:
  ``object`` options share the answer's shape and differ in colour (colours are uniform over the
  world's objects); ``verb`` options are verbs the world does with objects of that shape
  (``shape_verbs``); ``hand`` and ``next`` as with "take".

Written in the QaEgo4D-closed format (docs/formats.md 2.4; loader
``eval.loaders_mcq.load_qaego4d_closed``): ``video_id``, ``sample_id``, ``question``, ``answer``,
``wrong_answers`` (3), ``moment_start_frame`` / ``moment_end_frame`` (30 fps frames of the clip
inside the take's ego video), plus ``category``, ``take_name`` and ``split``. With ``video_dir``
each question's ego clip is also written as ``<video_dir>/<video_id>.mp4`` (the loader asks the
question about that whole file).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from exo2ego_jax.synthetic.world import EGO_FILE
from exo2ego_jax.data import video as video_lib

CATEGORIES = ("object", "hand", "next", "verb")
DISTRACTORS = ("take", "balanced")
VERB_TEXT = {"open": "open", "close": "close", "pick_up": "pick up", "put_down": "put down",
             "pour": "pour from", "move": "move", "relocate": "move"}
NUM_OPTIONS = 4  # QaEgo4D-closed: answer + 3 wrong answers


def _verb(v: str) -> str:
    return VERB_TEXT.get(v, v.replace("_", " "))


def _obj(o: dict[str, Any]) -> str:
    return f"the {o['colour']} {o['shape']}"


def _distinct_wrong(answer: str, pool: Sequence[str], rng: np.random.Generator, n: int,
                    fallback: Sequence[str]) -> list[str] | None:
    """n distinct wrong answers: from `pool` first (same take), then `fallback` (plausible)."""
    out: list[str] = []
    for src in (list(pool), list(fallback)):
        order = rng.permutation(len(src)) if src else []
        for j in order:
            cand = src[int(j)]
            if cand != answer and cand not in out:
                out.append(cand)
            if len(out) == n:
                return out
    return None


def shape_verbs(meta: dict[str, Any]) -> dict[str, list[str]]:
    """Verb phrases the world ever does with each object shape (all takes of `meta`), sorted."""
    out: dict[str, set[str]] = {}
    for take in meta["takes"].values():
        shape = {o["id"]: o["shape"] for o in take["objects"]}
        for n in take["narrations"]:
            if n["object"] in shape:
                out.setdefault(shape[n["object"]], set()).add(_verb(n["verb"]))
    return {k: sorted(v) for k, v in out.items()}


def take_questions(take: dict[str, Any], rng: np.random.Generator, *, categories: Sequence[str] = CATEGORIES,
                   colours: Sequence[str], shapes: Sequence[str], fps: float = 30.0,
                   distractors: str = "take",
                   verbs_by_shape: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Questions about every narration of one take (see module docstring).

    `verbs_by_shape` (``shape_verbs`` of the world) is needed with ``distractors="balanced"``.
    """
    if distractors not in DISTRACTORS:
        raise ValueError(f"egobench_synthetic: distractors={distractors!r}; expected one of {DISTRACTORS}")
    if distractors == "balanced" and verbs_by_shape is None:
        raise ValueError("egobench_synthetic: distractors='balanced' needs verbs_by_shape (shape_verbs(meta))")
    balanced = distractors == "balanced"
    objs = {o["id"]: o for o in take["objects"]}
    take_objs = [_obj(o) for o in take["objects"]]
    any_objs = [f"the {c} {s}" for c in colours for s in shapes]
    verbs = sorted({_verb(v) for v in VERB_TEXT})
    out = []
    for n in take["narrations"]:
        obj = objs.get(n["object"])
        if obj is None:
            continue
        base = {"take_name": take["take_name"], "narration_index": n["index"], "text": n["text"],
                "moment_start_frame": int(round(n["start_sec"] * fps)),
                "moment_end_frame": int(round(n["end_sec"] * fps))}
        qs = []
        if "object" in categories:
            q = f"Which object did I just {_verb(n['verb'])}?"
            if balanced:  # same shape, other colours: the shape (and so the verb) tells nothing
                qs.append(("object", q, _obj(obj), [f"the {c} {obj['shape']}" for c in colours], []))
            else:
                qs.append(("object", q, _obj(obj), take_objs, any_objs))
        if "hand" in categories and n.get("hand") in ("left", "right"):
            other = "right" if n["hand"] == "left" else "left"
            qs.append(("hand", "Which hand did I use just now?", f"the {n['hand']} hand",
                       [f"the {other} hand"], ["both hands", "neither hand"]))
        if "next" in categories and n.get("next_verb") and n.get("next_object") in objs:
            ans = f"{_verb(n['next_verb'])} {_obj(objs[n['next_object']])}"
            pool = [f"{_verb(v)} {o}" for v in VERB_TEXT for o in take_objs]
            qs.append(("next", "What do I do next?", ans, pool, []))
        if "verb" in categories:
            pool = verbs_by_shape.get(obj["shape"], []) if balanced else []
            qs.append(("verb", f"What did I just do with {_obj(obj)}?", _verb(n["verb"]), pool,
                       [] if balanced else verbs))
        for cat, question, answer, pool, fallback in qs:
            wrong = _distinct_wrong(answer, pool, rng, NUM_OPTIONS - 1, fallback)
            if wrong is None:
                continue
            out.append({**base, "category": cat, "question": question, "answer": answer, "wrong_answers": wrong})
    return out


def generate(world_root: str, split: str = "val", *, seed: int = 0, categories: Sequence[str] = CATEGORIES,
             take_names: Sequence[str] | None = None, distractors: str = "take") -> list[dict[str, Any]]:
    """All questions of `split` (or of `take_names`) of the world at `world_root`, deterministic.

    A question whose category cannot get 3 distinct wrong answers (e.g. a verb never done with
    more than one other verb on that shape) is skipped.
    """
    path = os.path.join(world_root, "synthetic_meta.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: egobench_synthetic needs a synthetic world "
                                "(job synthetic_world) with its synthetic_meta.json")
    with open(path) as f:
        meta = json.load(f)
    cfg = meta.get("config", {})
    colours, shapes = cfg.get("colours") or ("red", "blue"), cfg.get("shapes") or ("cup", "box")
    fps = float(cfg.get("fps", 30))
    verbs_by_shape = shape_verbs(meta)
    items = []
    for uid, take in sorted(meta["takes"].items(), key=lambda kv: kv[1]["take_name"]):
        if take_names is not None:
            if take["take_name"] not in take_names:
                continue
        elif take.get("split") != split:
            continue
        rng = np.random.default_rng([seed, int(uid.replace("-", "")[:8], 16)])
        for q in take_questions(take, rng, categories=categories, colours=colours, shapes=shapes, fps=fps,
                                distractors=distractors, verbs_by_shape=verbs_by_shape):
            vid = f"{take['take_name']}_{q['narration_index']:03d}"
            items.append({"video_id": vid, "sample_id": f"{vid}_{q['category']}", "take_uid": uid,
                          "split": take.get("split"), "fps": fps, **q})
    return items


def write(world_root: str, out_json: str, split: str = "val", *, video_dir: str = "", seed: int = 0,
          categories: Sequence[str] = CATEGORIES, distractors: str = "take") -> dict[str, Any]:
    """Writes the questions (QaEgo4D-closed JSON) and, with `video_dir`, one ego clip per moment."""
    items = generate(world_root, split, seed=seed, categories=categories, distractors=distractors)
    if not items:
        raise ValueError(f"{world_root}: no questions for split {split!r} (no takes or no narrations there)")
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(items, f, indent=1)
    clips = 0
    if video_dir:
        os.makedirs(video_dir, exist_ok=True)
        for it in {i["video_id"]: i for i in items}.values():
            src = ego_video_path(world_root, it["take_name"])
            lo, hi = it["moment_start_frame"], max(it["moment_end_frame"], it["moment_start_frame"] + 1)
            frames = video_lib.decode_frames(src, list(range(lo, hi)))
            video_lib.encode_mp4(frames, os.path.join(video_dir, f"{it['video_id']}.mp4"), fps=int(it["fps"]))
            clips += 1
    counts = {c: sum(i["category"] == c for i in items) for c in categories}
    return {"questions": len(items), "clips": clips, "by_category": counts, "json": out_json}


def ego_video_path(world_root: str, take_name: str) -> str:
    return os.path.join(world_root, "takes", take_name, "frame_aligned_videos", EGO_FILE)
