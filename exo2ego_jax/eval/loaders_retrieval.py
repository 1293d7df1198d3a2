"""Loaders of the video-text benchmarks that are not VLM text MCQs (FORMATS.md 2.2, 2.3):
EgoMCQ (text -> clip retrieval among 5) and Charades-Ego (157-way multi-label classification).
"""
from __future__ import annotations

import csv
import os
import re

from exo2ego_jax.eval.loaders_mcq import read_json, require
from exo2ego_jax.eval.records import ClassificationRecord, ClassificationSet, RetrievalRecord, VideoRef

# EgoVLP stores Ego4D videos as 600-s chunks `<video_uid>/<int(sec // 600)>.mp4` (README, loader).
EGOMCQ_CHUNK_SEC = 600.0
# EgoMCQ `types`: EgoVLP's loader comment says "1 for inter; 2 for intra" while its metric zips
# sorted types with ["Intra-video", "Inter-video"]. We follow the loader comment: FORMATS.md's
# example with types=1 has candidates from different videos, which is what inter-video means.
EGOMCQ_TYPE_GROUPS = {1: "inter", 2: "intra"}
_NARRATION_TAG = re.compile(r"#\s*[A-Za-z]+\s*")


def clean_narration(text: str) -> str:
    """'#C C opens the fridge' -> 'C opens the fridge' (Ego4D narration tags '#C', '#O', '#unsure')."""
    return " ".join(_NARRATION_TAG.sub(" ", text).split())


def _clip_ref(row: dict, video_dir: str, chunk_sec: float) -> VideoRef:
    start, end = float(row["clip_start"]), float(row["clip_end"])
    chunk = int(start // chunk_sec)
    # A clip crossing a chunk boundary has end > chunk_sec; the video reader must continue into
    # the next chunk file (EgoVLP does) or clamp.
    return VideoRef(os.path.join(video_dir, str(row["video_uid"]), f"{chunk}.mp4"),
                    start - chunk * chunk_sec, end - chunk * chunk_sec)


def load_egomcq(annotation: str, video_dir: str, chunk_sec: float = EGOMCQ_CHUNK_SEC,
                strip_tags: bool = True) -> list[RetrievalRecord]:
    """EgoVLP `egomcq.json`: {str(i): {query, choices{"0".."4"}, answer, types}} -> retrieval records."""
    data = read_json(annotation)
    if not isinstance(data, dict):
        raise ValueError(f"{annotation}: expected a JSON object keyed by '0'..'N-1', got {type(data).__name__}")
    row_keys = ["video_uid", "clip_start", "clip_end", "clip_text"]
    records = []
    for key in sorted(data, key=lambda k: int(k) if str(k).isdigit() else str(k)):
        item = data[key]
        require(item, ["query", "choices", "answer", "types"], annotation, key)
        require(item["query"], row_keys, annotation, f"{key}.query")
        choices = item["choices"]
        if not isinstance(choices, dict) or not choices:
            raise ValueError(f"{annotation} record {key}: choices must be an object keyed '0'..'4', got {choices!r}")
        order = sorted(choices, key=int)
        for c in order:
            require(choices[c], row_keys, annotation, f"{key}.choices.{c}")
        group = EGOMCQ_TYPE_GROUPS.get(int(item["types"]))
        if group is None:
            raise ValueError(f"{annotation} record {key}: types={item['types']!r}, expected one of "
                             f"{sorted(EGOMCQ_TYPE_GROUPS)}")
        text = item["query"]["clip_text"]
        records.append(RetrievalRecord(
            uid=str(key), query=clean_narration(text) if strip_tags else text,
            candidates=[_clip_ref(choices[c], video_dir, chunk_sec) for c in order],
            answer_index=order.index(str(item["answer"])), group=group,
            meta={"query_video_uid": item["query"]["video_uid"]}))
    return records


def load_charades_classes(path: str) -> list[str]:
    """`Charades_v1_classes.txt`: 157 lines 'c000 Holding some clothes' -> names by class index."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Charades classes file {path!r} does not exist (eval.paths.charades_ego.classes)")
    names = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            code, _, name = line.strip().partition(" ")
            if not re.fullmatch(r"c\d{3}", code) or not name:
                raise ValueError(f"{path} line {n}: expected 'cNNN class name', got {line.strip()!r}")
            names[int(code[1:])] = name.strip()
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: class codes are not c000..c{len(names) - 1:03d} without gaps")
    return [names[i] for i in range(len(names))]


def parse_charades_actions(actions: str, num_classes: int, where: str) -> list[int]:
    """'c106 0.00 5.60;c107 1.00 6.00' -> sorted unique class indices ([] for '')."""
    labels = set()
    for part in filter(None, (p.strip() for p in actions.split(";"))):
        fields = part.split()
        if len(fields) != 3 or not re.fullmatch(r"c\d{3}", fields[0]):
            raise ValueError(f"{where}: action {part!r} is not 'cNNN start end'")
        idx = int(fields[0][1:])
        if idx >= num_classes:
            raise ValueError(f"{where}: class {fields[0]} >= number of classes {num_classes}")
        labels.add(idx)
    return sorted(labels)


def load_charades_ego(csv_path: str, video_dir: str, classes_path: str,
                      only_egocentric: bool = False) -> ClassificationSet:
    """Charades-Ego CSV -> one multi-label record per video (`<video_dir>/<id>.mp4`, whole video).

    EgoVLP evaluates on `CharadesEgo_v1_test_only1st.csv`; `only_egocentric` instead filters a
    full CSV on its v1 `egocentric` column.
    """
    class_names = load_charades_classes(classes_path)
    if not os.path.exists(csv_path):
        raise FileNotFoundError(f"Charades-Ego CSV {csv_path!r} does not exist (eval.paths.charades_ego.annotation)")
    records = []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "actions"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: header lacks {sorted(missing)}; got {reader.fieldnames}")
        for n, row in enumerate(reader, 2):
            if only_egocentric and row.get("egocentric", "Yes").strip() != "Yes":
                continue
            labels = parse_charades_actions(row["actions"] or "", len(class_names), f"{csv_path} line {n}")
            records.append(ClassificationRecord(
                uid=row["id"], video=VideoRef(os.path.join(video_dir, f"{row['id']}.mp4")), labels=labels,
                meta={k: row[k] for k in ("charades_video", "length") if row.get(k)}))
    return ClassificationSet(records=records, class_names=class_names)
