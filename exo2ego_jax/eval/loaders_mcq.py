"""Loaders of the public multiple-choice benchmark files (docs/formats.md section 2) -> `MCQRecord`s.

Each loader takes the annotation file as distributed plus the folder its videos were extracted
to, and fails on a malformed record with the file, the record index, the key and what to do.
"""
from __future__ import annotations

import ast
import json
import os
import re
import zlib
from typing import Any, Sequence

import numpy as np

from exo2ego_jax.eval.records import LETTERS, MCQRecord, VideoRef

# Ego4D / EgoPlan frame indices are at 30 fps (docs/formats.md 2.4 "NLQ clip seconds x 30"; EgoPlan2
# utils divide by 30).
EGO4D_FPS = 30.0
# EgoPlan-Bench question, the same for every sample (docs/formats.md 2.6); EgoPlan-Bench2 files carry
# only `task_goal`, so its question is built from it.
EGOPLAN_QUESTION = ("Considering the progress shown in the video and my current observation in the last frame, "
                    "what action should I take next in order to {goal}?")


def read_json(path: str) -> Any:
    """json.load with an error that names the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"benchmark file {path!r} does not exist: check the eval.paths.* config fields")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def require(item: Any, keys: Sequence[str], path: str, where: Any) -> None:
    """Raise naming the file, the record and the missing keys."""
    if not isinstance(item, dict):
        raise ValueError(f"{path} record {where}: expected a JSON object, got {type(item).__name__}")
    missing = [k for k in keys if k not in item]
    if missing:
        raise ValueError(f"{path} record {where}: missing key(s) {missing}; has {sorted(item)}. "
                         "Is this the right file for this benchmark (docs/formats.md section 2)?")


def _as_list(data: Any, path: str) -> list:
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _letter_to_index(letter: Any, letters: Sequence[str], path: str, where: Any, key: str) -> int:
    text = str(letter).strip().strip("()").upper()[:1]
    if text not in letters:
        raise ValueError(f"{path} record {where}: {key}={letter!r} is not one of the option letters {list(letters)}")
    return list(letters).index(text)


def load_egoschema(questions: str, video_dir: str, answers: str = "", labelled_only: bool = True) -> list[MCQRecord]:
    """EgoSchema `questions.json` (`option 0`..`option 4`) + optional `subset_answers.json`.

    Videos are `<video_dir>/<q_uid>.mp4` (EgoSchema README). With `labelled_only`, questions
    without a public answer are dropped (only the 500-question subset can be scored offline).
    """
    items = _as_list(read_json(questions), questions)
    truth = read_json(answers) if answers else {}
    records = []
    for i, item in enumerate(items):
        require(item, ["q_uid", "question", "option 0"], questions, i)
        options = []
        while f"option {len(options)}" in item:
            options.append(str(item[f"option {len(options)}"]))
        uid = item["q_uid"]
        answer = truth.get(uid)
        if answer is None and labelled_only and answers:
            continue
        records.append(MCQRecord(
            uid=uid, video=VideoRef(os.path.join(video_dir, f"{uid}.mp4")), question=item["question"],
            options=options, answer_index=None if answer is None else int(answer),
            meta={"google_drive_id": item.get("google_drive_id")}))
    return records


def load_egoplan(annotation: str, video_dir: str, fps: float = EGO4D_FPS) -> list[MCQRecord]:
    """EgoPlan-Bench (`choice_a..d` + `golden_choice_idx`) and EgoPlan-Bench2 (same, no `question`).

    Bench 1: Ego4D video `<video_dir>/<video_id>.mp4`; EPIC-KITCHENS frame folder
    `<video_dir>/<P01>/rgb_frames/<P01_01>`; the window runs from the first progress narration's
    start frame to the current observation frame [I]. Bench 2: `<video_dir>/<uid>.mp4` with
    uid = sample_id before the first `_`, window [task_start_frame, current_observation_frame]/fps.
    Category: `video_source` (bench 1) or `domain` (bench 2).
    """
    items = _as_list(read_json(annotation), annotation)
    records = []
    for i, item in enumerate(items):
        require(item, ["sample_id", "task_goal", "choice_a", "choice_b", "golden_choice_idx",
                       "current_observation_frame"], annotation, i)
        options = []
        for letter in "abcdefgh":
            if f"choice_{letter}" not in item:
                break
            options.append(str(item[f"choice_{letter}"]))
        answer = _letter_to_index(item["golden_choice_idx"], LETTERS[: len(options)], annotation, i,
                                  "golden_choice_idx")
        end = float(item["current_observation_frame"]) / fps
        if "video_source" in item:  # EgoPlan-Bench
            require(item, ["video_id", "question"], annotation, i)
            video_id = str(item["video_id"])
            if item["video_source"] == "EpicKitchens":
                path = os.path.join(video_dir, video_id.split("_")[0], "rgb_frames", video_id)
            else:
                path = os.path.join(video_dir, f"{video_id}.mp4")
            progress = item.get("task_progress_metadata") or []
            start = min((float(p["start_frame"]) for p in progress), default=0.0) / fps
            question, category = item["question"], item["video_source"]
        else:  # EgoPlan-Bench2
            uid = str(item["sample_id"]).split("_")[0]
            path = os.path.join(video_dir, f"{uid}.mp4")
            start = float(item.get("task_start_frame", 0)) / fps
            question = item.get("question") or EGOPLAN_QUESTION.format(goal=item["task_goal"])
            category = item.get("domain")
        records.append(MCQRecord(
            uid=str(item["sample_id"]), video=VideoRef(path, start, end), question=question, options=options,
            answer_index=answer, category=category, meta={"task_goal": item["task_goal"]}))
    return records


def shuffled_options(answer: str, wrong: Sequence[str], seed: int, key: str) -> tuple[list[str], int]:
    """Answer + wrong answers in an order fixed by (seed, key): independent of file order."""
    options = [answer, *wrong]
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    order = rng.permutation(len(options))
    return [options[j] for j in order], int(np.argmax(order == 0))


def load_qaego4d_closed(annotation: str, video_dir: str, seed: int = 0, fps: float = EGO4D_FPS) -> list[MCQRecord]:
    """QaEgo4D-closed (GroundVQA): `answer` + `wrong_answers` shuffled into (A)-(D) with `seed`.

    The question is asked about the whole clip `<video_dir>/<video_id>.mp4`; the ground-truth
    moment (frames at 30 fps) is kept in `meta` only, as giving it to the model would leak where to look.
    An optional `category` field (not in the public file; the synthetic EgoBench writes one) is kept.
    """
    items = _as_list(read_json(annotation), annotation)
    records = []
    for i, item in enumerate(items):
        require(item, ["video_id", "sample_id", "question", "answer", "wrong_answers"], annotation, i)
        options, answer = shuffled_options(str(item["answer"]), [str(w) for w in item["wrong_answers"]],
                                           seed, str(item["sample_id"]))
        meta = {}
        if "moment_start_frame" in item:
            meta["moment"] = (float(item["moment_start_frame"]) / fps, float(item["moment_end_frame"]) / fps)
        records.append(MCQRecord(
            uid=str(item["sample_id"]), video=VideoRef(os.path.join(video_dir, f"{item['video_id']}.mp4")),
            question=item["question"], options=options, answer_index=answer, category=item.get("category"),
            meta=meta))
    return records


def _letter_dict_options(choices: Any, path: str, where: Any, key: str) -> tuple[list[str], list[str]]:
    if not isinstance(choices, dict) or not choices:
        raise ValueError(f"{path} record {where}: {key} must be a non-empty {{letter: text}} object, got {choices!r}")
    letters = [str(k).strip().upper() for k in choices]
    return letters, [str(v) for v in choices.values()]


def load_egotaskqa_mcq(annotation: str, video_dir: str) -> list[MCQRecord]:
    """EgoTaskQA as packaged for MCQ by EgoThinker: `{q, video_path, a, option{A..E}}`.

    Category: `reference` (direct/indirect) when the file carries it, else none.
    """
    items = _as_list(read_json(annotation), annotation)
    records = []
    for i, item in enumerate(items):
        require(item, ["q", "video_path", "a", "option"], annotation, i)
        letters, options = _letter_dict_options(item["option"], annotation, i, "option")
        records.append(MCQRecord(
            uid=str(item.get("question_id", i)), video=VideoRef(os.path.join(video_dir, item["video_path"])),
            question=item["q"], options=options, answer_index=_letter_to_index(item["a"], letters, annotation, i, "a"),
            category=item.get("reference")))
    return records


_VLN_OPTION = re.compile(r"^\s*([A-Z])\s*[:.)]\s*(.+?)\s*$")


def parse_vlnqa_text(text: str, path: str = "<text>", where: Any = "?") -> tuple[str, list[str], list[str]]:
    """Split a VLN-QA `text` into (question, option letters, options).

    The text is "<instruction + question>\\nOption:\\nA: ...\\nB: ...\\nOnly give the best option."
    """
    head, sep, tail = text.partition("Option:")
    if not sep:
        raise ValueError(f"{path} record {where}: `text` has no 'Option:' line to split options from: {text[:200]!r}")
    letters, options = [], []
    for line in tail.splitlines():
        if m := _VLN_OPTION.match(line):
            letters.append(m.group(1))
            options.append(m.group(2))
    if len(options) < 2:
        raise ValueError(f"{path} record {where}: found {len(options)} 'X: option' lines after 'Option:', need >= 2")
    return head.strip(), letters, options


def load_vlnqa(annotation: str, video_dir: str) -> list[MCQRecord]:
    """VLN-QA (EgoThinker `vlnqa.json`): `text` holds question + options; `gt` is the letter.

    The original `text` is kept as `meta["raw_prompt"]` (prompt style `raw` uses it verbatim).
    """
    items = _as_list(read_json(annotation), annotation)
    records = []
    for i, item in enumerate(items):
        require(item, ["text", "video_path", "gt"], annotation, i)
        question, letters, options = parse_vlnqa_text(item["text"], annotation, i)
        records.append(MCQRecord(
            uid=str(i), video=VideoRef(os.path.join(video_dir, item["video_path"])), question=question,
            options=options, answer_index=_letter_to_index(item["gt"], letters, annotation, i, "gt"),
            meta={"raw_prompt": item["text"]}))
    return records


def ego_view_filename(video_filename: str) -> str:
    """Ego-in-Exo's rule: the ego video of `<segment>_exo1` is `<segment>_ego` (drop 4 chars, add 'ego')."""
    return video_filename[:-4] + "ego"


def load_answer_choices(annotation: str, video_dir: str, views: Sequence[str] = ()) -> list[MCQRecord]:
    """Ego-in-Exo Perception and ADL-X MCQ files: `answer_choices` + `ground_truth_letter`.

    With `views` (Ego-in-Exo: ("exo", "ego")), each question becomes one record per view:
    exo = `<video_dir>/<video_filename>.mp4`, ego = `<video_dir>/<ego_view_filename(..)>.mp4`.
    Without views (ADL-X), `video_filename` already has its extension.
    """
    items = _as_list(read_json(annotation), annotation)
    records = []
    for i, item in enumerate(items):
        require(item, ["video_filename", "question", "answer_choices", "ground_truth_letter"], annotation, i)
        letters, options = _letter_dict_options(item["answer_choices"], annotation, i, "answer_choices")
        answer = _letter_to_index(item["ground_truth_letter"], letters, annotation, i, "ground_truth_letter")
        name = str(item["video_filename"])
        for view in views or (None,):
            if view is None:
                path = os.path.join(video_dir, name)
            elif view == "exo":
                path = os.path.join(video_dir, f"{name}.mp4")
            elif view == "ego":
                path = os.path.join(video_dir, f"{ego_view_filename(name)}.mp4")
            else:
                raise ValueError(f"Ego-in-Exo views: expected 'exo' and/or 'ego', got {view!r}")
            records.append(MCQRecord(
                uid=f"{i}/{view}" if view else str(i), video=VideoRef(path), question=item["question"],
                options=options, answer_index=answer, category=item.get("category_name"), view=view,
                meta={"video_filename": name}))
    return records


def load_ego_in_exo(annotation: str, video_dir: str, views: Sequence[str] = ("exo", "ego")) -> list[MCQRecord]:
    """Ego-in-Exo Perception: every question on the exo view and on the ego view."""
    return load_answer_choices(annotation, video_dir, views=views)


_LEGACY_OPTION = re.compile(r"(\d+)\.\s*(\[.*?\])(?=\s*\d+\.\s*\[|\s*$)", re.S)


def _legacy_option_lists(text: str, path: str, where: Any) -> list[list[str]]:
    """LEGACY-Charades-AR `Options`: "1. ['a', 'b'] 2. ['c'] ..." -> [['a', 'b'], ['c'], ...]."""
    lists = []
    for number, body in _LEGACY_OPTION.findall(text):
        try:
            items = ast.literal_eval(body)
        except (SyntaxError, ValueError):
            # ADL-X's own reader splits on commas; an item with a stray quote still parses that way.
            items = [x.strip().strip("'\"") for x in body.strip("[]").split(",")]
        if int(number) != len(lists) + 1 or not isinstance(items, list):
            raise ValueError(f"{path} record {where}: Options is not '1. [..] 2. [..] ...': {text[:200]!r}")
        lists.append([str(x) for x in items])
    if len(lists) < 2:
        raise ValueError(f"{path} record {where}: found {len(lists)} numbered option lists in Options, need >= 2")
    return lists


def _adlx_legacy_charades_ar(items: list, path: str, video_dir: str) -> list[MCQRecord]:
    """LEGACY-Charades-AR.json: {id, Q, Options (string of numbered lists), Ground Truth (list)}.

    As ADL-X's legacy evaluation does: option k is its action list joined by ", ", the answer is
    the option whose list equals `Ground Truth`, the video is `<video_dir>/<id>.mp4`.
    """
    records = []
    for i, item in enumerate(items):
        require(item, ["id", "Q", "Options", "Ground Truth"], path, i)
        lists = _legacy_option_lists(str(item["Options"]), path, i)
        truth = [str(x) for x in item["Ground Truth"]]
        if truth not in lists:
            raise ValueError(f"{path} record {i}: `Ground Truth` {truth!r} is none of the option lists")
        records.append(MCQRecord(
            uid=str(item["id"]), video=VideoRef(os.path.join(video_dir, f"{item['id']}.mp4")), question=item["Q"],
            options=[", ".join(x) for x in lists], answer_index=lists.index(truth), meta={"release": "legacy"}))
    return records


def _adlx_legacy_tsu_tc(items: list, path: str, video_dir: str) -> list[MCQRecord]:
    """LEGACY-TSU-TC.json: {video_path, question, options{A..D}, correct_answer (letter)}."""
    records = []
    for i, item in enumerate(items):
        require(item, ["video_path", "question", "options", "correct_answer"], path, i)
        letters, options = _letter_dict_options(item["options"], path, i, "options")
        records.append(MCQRecord(
            uid=str(i), video=VideoRef(os.path.join(video_dir, item["video_path"])), question=item["question"],
            options=options, answer_index=_letter_to_index(item["correct_answer"], letters, path, i, "correct_answer"),
            meta={"release": "legacy"}))
    return records


def _adlx_legacy_keyed(data: dict, path: str, video_dir: str) -> list[MCQRecord]:
    """LEGACY-Smarthome-AR.json / LEGACY-LEMMA-TC.json: objects keyed by "0".."N-1".

    Smarthome-AR: {video_id (a path; its file name is joined to video_dir), question, choices{"1".."4"},
    ground_truth (the right choice's text)}. LEMMA-TC: {video_id, question, choices{"A".."F"},
    answer (letter), start_timestamp, end_timestamp}: the clip is `<video_dir>/<video_id>.mp4` from
    start to end (ADL-X publishes no legacy LEMMA reader; the window is what the record times).
    """
    records = []
    for key in sorted(data, key=lambda k: int(k) if str(k).isdigit() else str(k)):
        item = data[key]
        require(item, ["video_id", "question", "choices"], path, key)
        keys, options = _letter_dict_options(item["choices"], path, key, "choices")
        if "ground_truth" in item:  # Smarthome-AR
            truth = str(item["ground_truth"]).strip().lower()
            matches = [j for j, o in enumerate(options) if o.strip().lower() == truth]
            if not matches:
                raise ValueError(f"{path} record {key}: ground_truth {item['ground_truth']!r} is none of the "
                                 f"choices {options}")
            video = VideoRef(os.path.join(video_dir, os.path.basename(str(item["video_id"]))))
            answer = matches[0]
        else:  # LEMMA-TC
            require(item, ["answer", "start_timestamp", "end_timestamp"], path, key)
            answer = _letter_to_index(item["answer"], keys, path, key, "answer")
            video = VideoRef(os.path.join(video_dir, f"{item['video_id']}.mp4"), float(item["start_timestamp"]),
                             float(item["end_timestamp"]))
        records.append(MCQRecord(uid=str(key), video=video, question=str(item["question"]).strip(), options=options,
                                 answer_index=answer, meta={"release": "legacy"}))
    return records


def load_adlx(annotation: str, video_dir: str) -> list[MCQRecord]:
    """ADL-X MCQ files (Charades-AR, Smarthome-AR, LEMMA-TC, TSU-TC), current or legacy release.

    Current (HF `ADL-X-Evals`): a list of {video_filename, question, answer_choices,
    ground_truth_letter}. Legacy (`legacy/eval_data/LEGACY-*.json`) is recognised by its keys.
    """
    data = read_json(annotation)
    if isinstance(data, dict):
        return _adlx_legacy_keyed(data, annotation, video_dir)
    items = _as_list(data, annotation)
    first = items[0] if items and isinstance(items[0], dict) else {}
    if "Options" in first and "Ground Truth" in first:
        return _adlx_legacy_charades_ar(items, annotation, video_dir)
    if "correct_answer" in first:
        return _adlx_legacy_tsu_tc(items, annotation, video_dir)
    return load_answer_choices(annotation, video_dir)
