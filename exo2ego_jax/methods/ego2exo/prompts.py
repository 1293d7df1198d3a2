"""Ego2ExoVLM text: the teacher's query templates, seeded question choice, MCQ prompt, LLaVA records.

Everything here is plain Python so the labelling job, the student's data pipeline, the evaluation
adapter and the tests agree on one spelling of every prompt.

Sources: Ego2ExoVLM paper ([C] = the authors' public code): the 12 query templates verbatim, the
system prompt, and the MCQ prompt of Ego-in-Exo Perception / ADL-X.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from exo2ego_jax.data import instructions

# Ego2ExoVLM [C]: 3 query categories; one question of each is asked per ego keystep segment. The
# 12 templates live in data/instructions.py (one spelling for the synthetic tokenizer and the job).
QUERY_TEMPLATES: dict[str, tuple[str, ...]] = dict(instructions.EGO2EXO_QUESTIONS)
CATEGORIES: tuple[str, ...] = tuple(QUERY_TEMPLATES)
# Ego2ExoVLM [C]: the teacher's system prompt.
SYSTEM_PROMPT = "You are a helpful assistant."
VIDEO_TOKEN = "<video>"
PROBE_TOKEN = "<probe>"
# End-of-turn markers of common chat templates; a generated one ends the answer like EOS.
END_OF_TURN = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>")


def _stable_seed(seed: int, key: str) -> int:
    """A seed that depends only on (seed, key): resumed or re-sharded runs draw the same values."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**32)


def segment_questions(segment_id: str, seed: int) -> list[tuple[str, str]]:
    """The 3 (category, question) pairs asked about one segment: one template per category.

    The draw depends only on `seed` and `segment_id`, never on the order segments are visited,
    so a restarted or differently sharded labelling job asks the same questions.
    """
    rng = np.random.default_rng(_stable_seed(seed, "questions/" + segment_id))
    return [(cat, QUERY_TEMPLATES[cat][int(rng.integers(len(QUERY_TEMPLATES[cat])))]) for cat in CATEGORIES]


def choose_exo_view(segment_id: str, exo_cams: Sequence[str], seed: int) -> str:
    """One synchronised exo camera for a segment, drawn from (seed, segment_id) only."""
    if not exo_cams:
        raise ValueError(f"segment {segment_id!r} has no exo camera; expected >= 1 synchronised exo view")
    rng = np.random.default_rng(_stable_seed(seed, "exo/" + segment_id))
    return sorted(exo_cams)[int(rng.integers(len(exo_cams)))]


def mcq_prompt(question: str, choices: Mapping[str, str]) -> str:
    """Ego-in-Exo Perception / ADL-X prompt [P/C]: question, then '(A) text (B) text ...'."""
    opts = " ".join(f"({letter}) {text}" for letter, text in sorted(choices.items()))
    return f"{question} The output should be the choice among one of the following choices. Choices are {opts}"


def llava_record(
    *,
    record_id: str,
    video: str,
    question: str,
    answer: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One LLaVA / VideoLLaMA2 conversation sample (docs/formats.md section 3) with the <video> first."""
    rec: dict[str, Any] = {
        "id": record_id,
        "video": video,
        "conversations": [
            {"from": "human", "value": f"{VIDEO_TOKEN}\n{question}"},
            {"from": "gpt", "value": answer},
        ],
    }
    if extra:
        rec.update(extra)
    return rec


# ---- teacher label files ----------------------------------------------------------------------
# Progress is a JSON-lines file: one line per finished segment holding its 3 records. A line is
# written and flushed only after all 3 answers exist, so a crash leaves at most a torn last line,
# which `read_progress` ignores; the segment is then labelled again.

def read_progress(path: str) -> dict[str, list[dict[str, Any]]]:
    """segment_id -> its records, from a progress file (missing file: empty; torn last line: ignored)."""
    done: dict[str, list[dict[str, Any]]] = {}
    if not os.path.exists(path):
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn write from an interrupted run
            done[entry["segment_id"]] = entry["records"]
    return done


def append_progress(path: str, entries: Iterable[tuple[str, list[dict[str, Any]]]]) -> None:
    """Appends finished segments and fsyncs, so a later restart skips them."""
    with open(path, "a", encoding="utf-8") as f:
        for segment_id, records in entries:
            f.write(json.dumps({"segment_id": segment_id, "records": records}, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_llava_json(path: str, done: Mapping[str, list[dict[str, Any]]], order: Sequence[str]) -> int:
    """Writes the LLaVA JSON list (segments in `order`), atomically; returns the record count."""
    records = [r for seg in order if seg in done for r in done[seg]]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)
    return len(records)


def validate_llava_json(path: str) -> list[dict[str, Any]]:
    """Loads a LLaVA JSON file and checks the schema the student reads; errors name the record."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(data).__name__}")
    for i, rec in enumerate(data):
        for key in ("id", "video", "conversations"):
            if key not in rec:
                raise ValueError(f"{path}[{i}]: missing key {key!r}; got keys {sorted(rec)}")
        conv = rec["conversations"]
        if len(conv) % 2 or any(t.get("from") != ("human" if j % 2 == 0 else "gpt") for j, t in enumerate(conv)):
            raise ValueError(f"{path}[{i}] ({rec['id']}): conversations must alternate human/gpt from human")
        if VIDEO_TOKEN not in conv[0]["value"]:
            raise ValueError(f"{path}[{i}] ({rec['id']}): first human turn lacks {VIDEO_TOKEN}")
    return data


def eos_ids(tokenizer) -> list[int]:
    """Ids that end an answer: the tokenizer's EOS and the end-of-turn markers it has."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id} | {vocab[t] for t in END_OF_TURN if t in vocab}
    return sorted(i for i in ids if i is not None)
