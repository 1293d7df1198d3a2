"""Synthetic Ego-in-Exo Perception questions: ego properties asked of exo video (held-out takes).

Writes the real benchmark's format (docs/formats.md 2.8): `<out>/egoinexo_synthetic.json`, a list of
`{video_filename, question, answer_choices {letter: text}, ground_truth_letter, category_name}`,
and `<out>/videos/<segment>_exo1.mp4` + `<segment>_ego.mp4` clips, so the "eval" job's `ego_in_exo`
benchmark reads it unchanged (each question on the exo and on the ego view).

Questions are about the FIRST atomic action of a keystep segment, from `synthetic_meta.json`:

- ``hand``: which hand acts (left / right) - an ego property the exo view can show;
- ``object``: which object is acted on (other objects of the take as distractors);
- ``action``: what is done to that object (other verbs as distractors);
- ``marking``: the small marking on the object - ego-only by construction (too small for the
  exo cameras), so exo answers should stay near chance: a sanity floor.

Options are narration-style statements ("C picks up the red cup with the left hand."), so small
models trained on descriptions can be scored by option log-likelihood as well as by generation.
The exo clip comes from the camera that faces the actor (`best_exo_cam`).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from exo2ego_jax.data import video as video_lib
from exo2ego_jax.data.egoexo4d import EgoExo4D
from exo2ego_jax.eval.prompts import EGO2EXO_TEMPLATE

CATEGORIES = ("hand", "object", "action", "marking")
QUESTIONS = {
    "hand": "Which hand does the camera wearer use for the first action in this video?",
    "object": "Which object does the camera wearer handle first in this video?",
    "action": "What does the camera wearer do first in this video?",
    "marking": "What marking is on the object the camera wearer handles first?",
}
HAND_VERBS = ("pick_up", "open", "close", "shake")  # narrations of these verbs name the hand
VERB_PHRASES = {"pick_up": "picks up", "put_down": "puts down", "move": "moves", "open": "opens",
                "close": "closes", "pour": "pours the drink from", "shake": "shakes"}
LETTERS = "ABCD"


def action_statement(verb: str, obj: str, hand: str | None = None, marking: str | None = None) -> str:
    """'C picks up the red cup [with a white stripe] [with the left hand].' (narration style)."""
    text = f"C {VERB_PHRASES[verb]} the {obj}"
    if marking:
        text += f" with {marking}"
    if hand:
        text += f" with the {hand} hand"
    return text + "."


def exo_caption(n: dict[str, Any], objects: list[dict[str, Any]]) -> str:
    """What an exo-only annotator writes for a narration: what the other hand does and where the
    actor stands (exo-favoured), but not which hand acts or the object's marking (ego-favoured).
    The action comes first, as in the ego narrations, so both caption styles share a format."""
    del objects
    obj = f"{n['object_colour']} {n['object_shape']}"
    tgt = f"{n['target_colour']} {n['target_shape']}" if n.get("target_colour") else None
    verb = n["verb"]
    if verb == "put_down":
        text = (f"C puts the {obj} into the {tgt}" if n.get("into_box") else
                f"C puts down the {obj} next to the {tgt}" if tgt else f"C puts down the {obj} on the table")
    elif verb == "move":
        text = f"C moves the {obj} next to the {tgt}" if tgt else f"C moves the {obj} across the table"
    elif verb == "pour":
        text = f"C pours the drink from the {obj} into the {tgt}"
    else:
        text = f"C {VERB_PHRASES[verb]} the {obj}"
    return f"{text} while the other hand {n['other_hand_activity']}, standing at the {n['actor_side']} side of the table."


def segment_narrations(take: dict[str, Any], step: dict[str, Any]) -> list[dict[str, Any]]:
    by_index = {n["index"]: n for n in take["narrations"]}
    return [by_index[i] for i in step["actions"] if i in by_index]


def _choices(correct: str, distractors: list[str], rng: np.random.Generator) -> tuple[dict[str, str], str]:
    opts = [correct] + [d for d in dict.fromkeys(distractors) if d != correct][: len(LETTERS) - 1]
    order = rng.permutation(len(opts))
    shuffled = [opts[i] for i in order]
    letters = LETTERS[: len(shuffled)]
    return dict(zip(letters, shuffled)), letters[shuffled.index(correct)]


def _describe_marking(marking: str, colour: str) -> str:
    return "no marking" if marking == "none" else f"a {colour} {marking}"


def questions_for_segment(take: dict[str, Any], step: dict[str, Any], rng: np.random.Generator
                          ) -> list[dict[str, Any]]:
    """Up to one question per category about the segment's first action."""
    narrs = segment_narrations(take, step)
    if not narrs:
        return []
    n = narrs[0]
    objs = take["objects"]
    name = f"{n['object_colour']} {n['object_shape']}"
    out = []
    if n["verb"] in HAND_VERBS:
        correct = action_statement(n["verb"], name, n["hand"])
        other = action_statement(n["verb"], name, "left" if n["hand"] == "right" else "right")
        out.append(("hand", correct, [other]))
    others = [f"{o['colour']} {o['shape']}" for o in objs if f"{o['colour']} {o['shape']}" != name]
    if others:
        out.append(("object", action_statement(n["verb"], name),
                    [action_statement(n["verb"], o) for o in rng.permutation(others).tolist()]))
    verbs = [v for v in ("pick_up", "open", "shake", "close", "move") if v != n["verb"]]
    out.append(("action", action_statement(n["verb"], name),
                [action_statement(v, name) for v in rng.permutation(verbs).tolist()]))
    o = objs[n["object"]]
    marks = [_describe_marking(m, o["marking_colour"]) for m in ("stripe", "dot", "cross", "none")]
    mk = _describe_marking(o["marking"], o["marking_colour"])
    out.append(("marking", action_statement(n["verb"], name, marking=mk) if o["marking"] != "none" else
                f"C {VERB_PHRASES[n['verb']]} the {name} with no marking.",
                [action_statement(n["verb"], name, marking=m) if m != "no marking" else
                 f"C {VERB_PHRASES[n['verb']]} the {name} with no marking." for m in marks]))
    items = []
    for cat, correct, distract in out:
        choices, letter = _choices(correct, distract, rng)
        items.append({"question": QUESTIONS[cat], "answer_choices": choices, "ground_truth_letter": letter,
                      "category_name": cat})
    return items


def _write_clip(src: str, start: float, end: float, dst: str, fps: float) -> None:
    info = video_lib.probe(src)
    first = max(0, int(start * info.fps))
    last = min(info.num_frames, max(first + 1, int(np.ceil(end * info.fps))))
    frames = video_lib.decode_frames(src, np.arange(first, last))
    video_lib.encode_mp4(frames, dst, fps=int(round(info.fps or fps)))


def write_questions(root: str, out_dir: str, *, split: str = "val", seed: int = 0,
                    max_segments: int = 0, categories: tuple[str, ...] = CATEGORIES) -> dict[str, Any]:
    """Writes the benchmark for `split` takes of the synthetic world at `root`; returns a summary."""
    meta_path = os.path.join(root, "synthetic_meta.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path}: not a synthetic world (write one with the synthetic_world job)")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    ds = EgoExo4D(root)
    video_dir = os.path.join(out_dir, "videos")
    os.makedirs(video_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    items, segments = [], 0
    for uid in sorted(ds.split_uids(split), key=lambda u: ds.takes[u].take_name):
        take_meta, take = meta["takes"][uid], ds.takes[uid]
        for step in take_meta["keysteps"]:
            if max_segments and segments >= max_segments:
                break
            qs = [q for q in questions_for_segment(take_meta, step, rng) if q["category_name"] in categories]
            if not qs:
                continue
            seg = f"{take.take_name}_seg{step['index']:04d}"
            exo_cam = take_meta["best_exo_cam"]
            _write_clip(ds.video_path(uid, exo_cam), step["start"], step["end"],
                        os.path.join(video_dir, f"{seg}_exo1.mp4"), 30.0)
            _write_clip(ds.video_path(uid, take.ego_cam), step["start"], step["end"],
                        os.path.join(video_dir, f"{seg}_ego.mp4"), 30.0)
            items += [{"video_filename": f"{seg}_exo1", **q} for q in qs]
            segments += 1
    path = os.path.join(out_dir, "egoinexo_synthetic.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(items, f, indent=1)
    per_cat = {c: sum(i["category_name"] == c for i in items) for c in categories}
    hands = [i["answer_choices"][i["ground_truth_letter"]] for i in items if i["category_name"] == "hand"]
    hand_split = {h: sum(f"the {h} hand" in t for t in hands) for h in ("left", "right")}
    return {"annotation": path, "video_dir": video_dir, "questions": len(items), "segments": segments,
            "per_category": per_cat, "hand_split": hand_split}


def all_texts() -> list[str]:
    """Every word these questions can use (the demo's word-level tokenizer must cover them)."""
    texts = list(QUESTIONS.values()) + [EGO2EXO_TEMPLATE.format(question="", choices="(A) (B) (C) (D)")]
    texts += [f"{v} with the left hand right hand no marking" for v in VERB_PHRASES.values()]
    texts += ["while the other hand, standing at the side of the table."]
    return texts
