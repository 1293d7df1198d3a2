"""Loaders of the video-text benchmarks that are not VLM text MCQs: EgoMCQ (text -> clip retrieval
among 5), Charades-Ego (157-way multi-label classification) and EPIC-KITCHENS-100 multi-instance
retrieval (videos <-> sentences with a semantic relevance matrix).
"""
from __future__ import annotations

import ast
import csv
import os
import pickle
import re

import numpy as np

from exo2ego_jax.eval.loaders_mcq import read_json, require
from exo2ego_jax.eval.records import (ClassificationRecord, ClassificationSet, MultiInstanceRetrievalSet,
                                      RetrievalRecord, VideoRef)

# EgoVLP stores Ego4D videos as 600-s chunks `<video_uid>/<int(sec // 600)>.mp4` (README, loader).
EGOMCQ_CHUNK_SEC = 600.0
# EgoMCQ `types`: EgoVLP's loader comment says "1 for inter; 2 for intra" while its metric zips
# sorted types with ["Intra-video", "Inter-video"]. We follow the loader comment: docs/formats.md section 2.2's
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
        # A v0 CSV has no `egocentric` column: filtering it would silently keep third-person videos
        # and report an mAP over a different set, so refuse instead of guessing.
        if only_egocentric and "egocentric" not in reader.fieldnames:
            raise ValueError(
                f"{csv_path}: eval.charades_only_egocentric=True needs the v1 `egocentric` column, but the header "
                f"is {reader.fieldnames} (a v0 CSV?). Use CharadesEgo_v1_test_only1st.csv (already egocentric) "
                "with --config.eval.charades_only_egocentric=False, or the full v1 CSV.")
        for n, row in enumerate(reader, 2):
            if only_egocentric and (row["egocentric"] or "").strip() != "Yes":
                continue
            labels = parse_charades_actions(row["actions"] or "", len(class_names), f"{csv_path} line {n}")
            records.append(ClassificationRecord(
                uid=row["id"], video=VideoRef(os.path.join(video_dir, f"{row['id']}.mp4")), labels=labels,
                meta={k: row[k] for k in ("charades_video", "length") if row.get(k)}))
    return ClassificationSet(records=records, class_names=class_names)


# EPIC_100_retrieval_test.csv has the columns of the EPIC-KITCHENS-100 action CSVs.
EPIC_MIR_COLUMNS = ("narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "narration")


def epic_timestamp(text: str, where: str) -> float:
    """'00:01:02.35' -> 62.35 seconds."""
    parts = text.strip().split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        return int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
    except ValueError:
        raise ValueError(f"{where}: timestamp {text!r} is not HH:MM:SS.ff") from None


def _class_list(text: str | None, where: str) -> list[int]:
    """'[3, 10]' (all_noun_classes) or '7' -> [3, 10] / [7]; '' -> []."""
    if text is None or not text.strip():
        return []
    try:
        value = ast.literal_eval(text.strip())
    except (SyntaxError, ValueError):
        raise ValueError(f"{where}: {text!r} is not a class index or a list of them") from None
    values = value if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in values]


def _read_csv(path: str, what: str) -> tuple[list[str], list[dict[str, str]]]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist (eval.paths.epic_mir.*)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def load_relevance(path: str) -> np.ndarray:
    """The relevance pickle (caption_relevancy_EPIC_100_retrieval_test.pkl): a [videos, sentences] array."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"EPIC relevance matrix {path!r} does not exist (eval.paths.epic_mir.relevance)")
    with open(path, "rb") as f:
        try:
            # The official file is a pickled numpy array; pickle is the only way to read it.
            obj = pickle.load(f)
        except ModuleNotFoundError as e:
            raise ValueError(f"{path}: the pickle needs module {e.name!r}; save the matrix as a numpy array "
                             "(np.asarray(obj)) and point eval.paths.epic_mir.relevance at that") from e
    rel = np.asarray(obj.to_numpy() if hasattr(obj, "to_numpy") else obj, dtype=np.float64)
    if rel.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D [videos, sentences] matrix, got shape {rel.shape}")
    return rel


def load_epic_mir(test_csv: str, sentence_csv: str, relevance_pkl: str, video_dir: str,
                  video_ext: str = "MP4", video_subdir: str = "videos") -> MultiInstanceRetrievalSet:
    """EPIC-KITCHENS-100 `retrieval_annotations/`: the test CSV (one row per video clip), the sentence
    CSV (the unique narrations: id, narration) and the relevance pickle ([rows of the test CSV,
    rows of the sentence CSV]).

    Clip i is `<video_dir>/<participant_id>/<video_subdir>/<video_id>.<video_ext>` (the EPIC-KITCHENS
    download layout has video_subdir "videos"; "" for `<participant_id>/<video_id>.MP4`) from
    `start_timestamp` to `stop_timestamp`. Rows with several noun (or verb)
    classes keep all of them in `meta` (`all_noun_classes`, `all_verb_classes` where present);
    the relevance matrix already accounts for them.
    """
    header, rows = _read_csv(test_csv, "EPIC test CSV")
    missing = [c for c in EPIC_MIR_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{test_csv}: header lacks {missing}; got {header}. Expected EPIC_100_retrieval_test.csv")
    videos, uids, meta = [], [], []
    for n, row in enumerate(rows, 2):
        where = f"{test_csv} line {n}"
        start = epic_timestamp(row["start_timestamp"], where)
        stop = epic_timestamp(row["stop_timestamp"], where)
        if stop < start:
            raise ValueError(f"{where}: stop_timestamp {row['stop_timestamp']} is before start_timestamp")
        path = os.path.join(video_dir, row["participant_id"], video_subdir, f"{row['video_id']}.{video_ext}")
        videos.append(VideoRef(path, start, stop))
        uids.append(row["narration_id"])
        info = {"narration": row["narration"], "video_id": row["video_id"]}
        for key in ("verb_class", "noun_class", "all_verb_classes", "all_noun_classes"):
            if key in row:
                info[key] = _class_list(row[key], f"{where} column {key}")
        for key in ("start_frame", "stop_frame"):
            if row.get(key):
                info[key] = int(row[key])
        meta.append(info)
    s_header, s_rows = _read_csv(sentence_csv, "EPIC sentence CSV")
    if len(s_header) < 2:
        raise ValueError(f"{sentence_csv}: expected columns (id, narration), got {s_header}")
    text_col = "narration" if "narration" in s_header else s_header[1]
    sentence_uids = [r[s_header[0]] for r in s_rows]
    sentences = [r[text_col] for r in s_rows]
    rel = load_relevance(relevance_pkl)
    if rel.shape != (len(videos), len(sentences)):
        raise ValueError(f"{relevance_pkl}: relevance shape {rel.shape} != (rows of {os.path.basename(test_csv)}, "
                         f"rows of {os.path.basename(sentence_csv)}) = {(len(videos), len(sentences))}")
    return MultiInstanceRetrievalSet(video_uids=uids, videos=videos, sentence_uids=sentence_uids,
                                     sentences=sentences, relevance=rel, meta=meta)
