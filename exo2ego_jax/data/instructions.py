"""Instruction data: a reader of LLaVA / VideoLLaMA2 conversation JSON and an EgoIT-style generator.

Format (docs/formats.md section 3): a JSON list of ``{"id", "video"|"image"?, "conversations": [{"from":
"human"|"gpt", "value": str}, ...]}``. As in VideoLLaMA2's ``preprocess_multimodal``, a leading
non-human turn is dropped, turns must alternate human/gpt with an even count, and the modal
placeholder is moved to the start of the first human turn (``"<video>\\n" + rest``; added there when
missing). Images become one-frame videos, so their ``<image>`` placeholder is rewritten to
``<video>``. Optional ``"start"``/``"end"`` (seconds) select a clip of the video (our extension, used
by the generator). Malformed files and samples, and non-UTF-8 text, are skipped and counted.

The generator writes EgoIT-style data for an Ego-Exo4D (or synthetic) world: several instruction
templates per task (Exo2Ego: 10 templates per source), answered from the annotations (narrations,
keysteps, task names) and, for a synthetic world, its ground-truth attributes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Iterable

import numpy as np

from exo2ego_jax.data.egoexo4d import EgoExo4D
from exo2ego_jax.data.skips import SkipCounter

VIDEO_TOKEN, IMAGE_TOKEN = "<video>", "<image>"
_SURROGATE = re.compile("[\ud800-\udfff]")

# EgoIT-style templates (Exo2Ego: "10 instruction templates per source"; wording is ours).
CAPTION_TEMPLATES = (
    "Describe what the camera wearer is doing.",
    "What am I doing in this video?",
    "Briefly describe the action in this first-person video.",
    "What action is performed in this clip?",
    "Narrate the current action of the camera wearer.",
    "What is happening in this video from my point of view?",
    "Give a short description of the action shown.",
    "Which action does the person wearing the camera perform?",
    "Summarise the action in one sentence.",
    "What did I just do?",
)
KEYSTEP_TEMPLATES = (
    "Which step of the task is being performed?",
    "What step am I carrying out in this video?",
    "Name the keystep shown in this clip.",
    "What is the current step of the procedure?",
    "Which procedural step does this video show?",
)
TASK_TEMPLATES = (
    "What task is the camera wearer doing?",
    "What activity am I performing?",
    "Which task is shown in this video?",
    "What is the person trying to accomplish?",
)
ATTRIBUTE_TEMPLATES = (
    "What is the {name} in this video?",
    "Tell me the {name} shown in this clip.",
    "Which {name} can you see?",
)
OBJECT_TEMPLATES = (
    "What colour is the {shape}?",
    "Which colour does the {shape} on the table have?",
)
# Ego2ExoVLM teacher questions, one category each per segment (docs/papers.md, Ego2ExoVLM teacher [C]).
EGO2EXO_QUESTIONS = {
    "descriptive": (
        "Describe what is happening in this video in detail.",
        "What events are taking place in this video in detail?",
        "Describe the main actions shown in the video in detail.",
        "What activity is being performed in the video in detail?",
        "Provide a detailed description of what occurs in this clip."),
    "temporal": (
        "Summarize the sequence of events shown in this video.",
        "Outline the order of events shown in this video.",
        "Summarize the progression of events from beginning to end."),
    "spatial": (
        "What are the primary objects in the scene relevant to the action being performed?",
        "Where are the main objects and people located in the scene?",
        "Describe the objects in the video and how they are used.",
        "What objects are visible throughout the video?"),
}


def all_template_texts() -> list[str]:
    """Every template text (the synthetic tokenizer's vocabulary must cover them)."""
    out = [*CAPTION_TEMPLATES, *KEYSTEP_TEMPLATES, *TASK_TEMPLATES, *ATTRIBUTE_TEMPLATES, *OBJECT_TEMPLATES]
    out += [q for qs in EGO2EXO_QUESTIONS.values() for q in qs]
    return out + ["The camera wearer is doing {task}."]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One conversation: media (None for text-only) and LLaVA turns with the placeholder first."""

    id: str
    conversations: tuple[dict[str, str], ...]
    media: str | None = None  # "video" | "image" | None
    path: str | None = None   # absolute (joined to data_folder) media path
    start: float | None = None  # clip start in seconds (None: whole video)
    end: float | None = None


class BadSample(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def parse_sample(item: Any, data_folder: str = "") -> Sample:
    """One JSON list item -> Sample. Raises BadSample(reason, detail) when it is unusable."""
    if not isinstance(item, dict):
        raise BadSample("malformed_json", f"sample is a {type(item).__name__}, expected an object")
    if _has_surrogates(item):
        raise BadSample("non_utf8_text", "invalid UTF-8 in the sample")
    turns = item.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise BadSample("malformed_json", "'conversations' must be a list of {from, value} objects")
    turns = [dict(t) for t in turns]
    if turns and turns[0].get("from") != "human":
        turns = turns[1:]  # VideoLLaMA2 drops a leading non-human turn
    if not turns or len(turns) % 2:
        raise BadSample("malformed_json", f"need an even number >= 2 of alternating turns, got {len(turns)}")
    for i, t in enumerate(turns):
        want = "human" if i % 2 == 0 else "gpt"
        if t.get("from") != want or not isinstance(t.get("value"), str):
            raise BadSample("malformed_json", f"turn {i} must be {{'from': {want!r}, 'value': str}}, got {t}")
    media = "video" if "video" in item else "image" if "image" in item else None
    path = None
    if media is not None:
        rel = item[media]
        if not isinstance(rel, str) or not rel:
            raise BadSample("malformed_json", f"'{media}' must be a non-empty path string, got {rel!r}")
        path = os.path.join(data_folder, rel) if data_folder else rel
        # Move (or add) the modal token to the start of the first human turn, as VideoLLaMA2 does;
        # images are one-frame videos, so their token becomes <video>.
        first = turns[0]["value"].replace(IMAGE_TOKEN, VIDEO_TOKEN)
        if first.count(VIDEO_TOKEN) > 1:
            raise BadSample("malformed_json", f"first human turn has {first.count(VIDEO_TOKEN)} placeholders, "
                                              "expected one per sample")
        turns[0] = {"from": "human", "value": VIDEO_TOKEN + "\n" + first.replace(VIDEO_TOKEN, "").strip()}
    elif any(VIDEO_TOKEN in t["value"] or IMAGE_TOKEN in t["value"] for t in turns):
        raise BadSample("malformed_json", "placeholder in the text but no 'video'/'image' key")
    start, end = item.get("start"), item.get("end")
    try:
        start = None if start is None else float(start)
        end = None if end is None else float(end)
    except (TypeError, ValueError):
        raise BadSample("malformed_json", f"'start'/'end' must be seconds, got {start!r}/{end!r}") from None
    return Sample(id=str(item.get("id", "")), conversations=tuple(turns), media=media, path=path,
                  start=start, end=end)


def read_llava_json(path: str, *, data_folder: str | None = None,
                    skips: SkipCounter | None = None) -> list[Sample]:
    """All usable samples of a LLaVA/VideoLLaMA2 JSON file; bad file or samples skipped and counted.

    data_folder: media paths are relative to it (default: the JSON file's directory).
    """
    skips = skips if skips is not None else SkipCounter()
    folder = os.path.dirname(os.path.abspath(path)) if data_folder is None else data_folder
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        skips.seen()
        skips.skip("missing_file", path, str(e))
        return []
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        skips.seen()
        skips.skip("non_utf8_text", path, f"byte {e.start}: {e.reason}")
        return []
    except json.JSONDecodeError as e:
        skips.seen()
        skips.skip("malformed_json", path, f"line {e.lineno} column {e.colno}: {e.msg}")
        return []
    if not isinstance(data, list):
        skips.seen()
        skips.skip("malformed_json", path, f"top level is a {type(data).__name__}, expected a list of samples")
        return []
    out = []
    skips.seen(len(data))
    for i, item in enumerate(data):
        try:
            out.append(parse_sample(item, folder))
        except BadSample as e:
            skips.skip(e.reason, f"{path}[{i}]", str(e))
    return out


def _has_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False


# --- EgoIT-style generator ----------------------------------------------------------------------
def _conv(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"{VIDEO_TOKEN}\n{question}"}, {"from": "gpt", "value": answer}]


def generate_egoit(root: str, split: str, out_path: str, *, seed: int = 0, clip_sec: float = 2.0,
                   attribute_keys: tuple[str, ...] = ("actor_side",),
                   skips: SkipCounter | None = None) -> list[dict[str, Any]]:
    """Writes EgoIT-style instruction JSON for ``split`` of the world at ``root``; returns the samples.

    Tasks: narration captioning (``clip_sec`` window around each narration), keystep recognition
    (the segment), task recognition (whole take) and, when ``synthetic_meta.json`` has per-take
    ground truth, questions on ``attribute_keys`` and on the colour of each object. Each sample draws one of its task's
    templates with a seeded RNG. Video paths are the ego videos, relative to ``root``.
    """
    rng = np.random.default_rng(seed)
    reader = EgoExo4D(root, video_variant="full", skips=skips)
    meta_path = os.path.join(root, "synthetic_meta.json")
    attrs: dict[str, Any] = {}
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        takes_meta = meta.get("takes", {}) if isinstance(meta, dict) else {}
        attrs = takes_meta if isinstance(takes_meta, dict) else {}
    samples: list[dict[str, Any]] = []

    def add(take, question, answer, start=None, end=None):
        path = take.videos.get(take.ego_cam)
        if not path or not answer:
            return
        s = {"id": f"egoit_{split}_{len(samples):07d}", "video": os.path.relpath(path, root),
             "conversations": _conv(question, answer)}
        if start is not None:
            s["start"], s["end"] = round(max(0.0, start), 3), round(end, 3)
        samples.append(s)

    for n in reader.narrations(split):
        take = reader.takes[n.take_uid]
        add(take, CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))], n.text,
            n.timestamp - clip_sec / 2, n.timestamp + clip_sec / 2)
    try:
        keysteps = reader.keysteps(split)
    except FileNotFoundError:
        keysteps = []
    for s in keysteps:
        add(reader.takes[s.take_uid], KEYSTEP_TEMPLATES[rng.integers(len(KEYSTEP_TEMPLATES))],
            s.step_name, s.start, s.end)
    for uid in reader.split_uids(split):
        take = reader.takes[uid]
        if take.task_name:
            add(take, TASK_TEMPLATES[rng.integers(len(TASK_TEMPLATES))],
                f"The camera wearer is doing {take.task_name}.")
        meta = attrs.get(uid) or {}
        for name in attribute_keys:
            value = meta.get(name)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                template = ATTRIBUTE_TEMPLATES[rng.integers(len(ATTRIBUTE_TEMPLATES))]
                add(take, template.format(name=name.replace("_", " ")), str(value))
        objects = [o for o in meta.get("objects") or [] if isinstance(o, dict)]
        shapes = [o.get("shape") for o in objects]
        for obj in objects:
            # Only shapes that occur once in the take make an unambiguous colour question.
            if obj.get("shape") and obj.get("colour") and shapes.count(obj["shape"]) == 1:
                add(take, OBJECT_TEMPLATES[rng.integers(len(OBJECT_TEMPLATES))].format(shape=obj["shape"]),
                    str(obj["colour"]))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(samples, f, indent=1, ensure_ascii=False)
    return samples


def texts(samples: Iterable[Sample]) -> list[str]:
    """All turn texts of samples (e.g. for a tokenizer vocabulary)."""
    return [t["value"] for s in samples for t in s.conversations]
