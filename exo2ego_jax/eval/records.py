"""The internal record types every benchmark loader produces (from the files of docs/formats.md section 2).

One MCQ record type serves all multiple-choice benchmarks; EgoMCQ (text -> clip retrieval) and
Charades-Ego (multi-label classification) have their own small record types because their
model calls and metrics differ.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclasses.dataclass(frozen=True)
class VideoRef:
    """A video for the model adapter: a file (or frame folder) and an optional window in seconds.

    `frames` may hold preloaded frames ([F, H, W, 3] uint8) instead of a path (tests, demos);
    `start`/`end` of None mean the whole file.
    """

    path: str
    start: float | None = None
    end: float | None = None
    frames: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "start": self.start, "end": self.end}


@dataclasses.dataclass
class MCQRecord:
    """One multiple-choice question about one video.

    `answer_index` is None when the public release hides the answer (EgoSchema outside the
    500-question subset); such questions get predictions but are left out of accuracy.
    `view` is set only for benchmarks asked on several views of one scene (Ego-in-Exo).
    """

    uid: str
    video: VideoRef
    question: str
    options: list[str]
    answer_index: int | None
    category: str | None = None
    view: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if len(self.options) < 2:
            raise ValueError(f"MCQ {self.uid!r}: expected >= 2 options, got {self.options!r}")
        if len(self.options) > len(LETTERS):
            raise ValueError(f"MCQ {self.uid!r}: at most {len(LETTERS)} options, got {len(self.options)}")
        if self.answer_index is not None and not 0 <= self.answer_index < len(self.options):
            raise ValueError(
                f"MCQ {self.uid!r}: answer_index {self.answer_index} outside 0..{len(self.options) - 1}")

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]


@dataclasses.dataclass
class RetrievalRecord:
    """Text -> clip retrieval among a few candidate clips (EgoMCQ)."""

    uid: str
    query: str
    candidates: list[VideoRef]
    answer_index: int
    group: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ClassificationRecord:
    """A video with a set of positive class indices (Charades-Ego, multi-label)."""

    uid: str
    video: VideoRef
    labels: list[int]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ClassificationSet:
    """All records of a multi-label benchmark plus the class names used as text queries."""

    records: list[ClassificationRecord]
    class_names: list[str]


@dataclasses.dataclass
class OpenQARecord:
    """One open-ended question about one video, answered in free text (QaEgo4D open)."""

    uid: str
    video: VideoRef
    question: str
    answer: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MultiInstanceRetrievalSet:
    """EPIC-KITCHENS-100 multi-instance retrieval: videos, unique sentences, semantic relevance.

    `relevance[i, j]` in [0, 1] is how relevant sentence j is to video i (1 = same verb and noun
    classes); the official metrics rank sentences per video and videos per sentence with it.
    """

    video_uids: list[str]
    videos: list[VideoRef]
    sentence_uids: list[str]
    sentences: list[str]
    relevance: np.ndarray  # [num_videos, num_sentences] float
    meta: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # per video: narration, classes

    def __post_init__(self):
        shape = (len(self.videos), len(self.sentences))
        if self.relevance.shape != shape:
            raise ValueError(f"relevance matrix has shape {self.relevance.shape}, "
                             f"expected [videos, sentences] = {shape}")


def per_question(row_scores, options: Sequence[Sequence[str]]) -> list[list[float]]:
    """Scores of the flattened (question, option) rows [R] -> one list per question, in the order of
    `options` (what MCQModel.option_loglik returns)."""
    out, start = [], 0
    for opts in options:
        out.append([float(x) for x in row_scores[start:start + len(opts)]])
        start += len(opts)
    return out
