"""Benchmark metrics in numpy: MCQ accuracy with breakdowns, EgoVLP-style mAP, EgoMCQ accuracy.

All accuracies and mAPs are percentages (0-100), as the papers report them.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

import numpy as np


def _pct(correct: int, total: int) -> float:
    return 100.0 * correct / total if total else float("nan")


def accuracy_by(rows: Iterable[Mapping[str, Any]], key) -> dict[str, dict[str, float]]:
    """{group: {"accuracy", "num"}} of rows grouped by `key(row)` (rows whose key is None are skipped)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        group = key(row)
        if group is None:
            continue
        counts[str(group)][0] += int(bool(row["correct"]))
        counts[str(group)][1] += 1
    return {g: {"accuracy": _pct(c, n), "num": n} for g, (c, n) in sorted(counts.items())}


def mcq_metrics(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy overall, per category, per view and per (view, category).

    Each row has `answer_index` (None = no public answer: excluded), `pred_index` (None =
    unparseable: counted wrong and reported as `unparsed`), `correct`, `category`, `view`.
    """
    scored = [r for r in rows if r.get("answer_index") is not None]
    out: dict[str, Any] = {
        "accuracy": _pct(sum(bool(r["correct"]) for r in scored), len(scored)),
        "num": len(scored),
        "num_unlabelled": len(rows) - len(scored),
        "unparsed": sum(r.get("pred_index") is None for r in scored),
    }
    if any(r.get("category") is not None for r in scored):
        out["per_category"] = accuracy_by(scored, lambda r: r.get("category"))
    if any(r.get("view") is not None for r in scored):
        out["per_view"] = accuracy_by(scored, lambda r: r.get("view"))
        if "per_category" in out:
            out["per_view_category"] = accuracy_by(
                scored, lambda r: f"{r['view']}/{r['category']}" if r.get("view") and r.get("category") else None)
    return out


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one class: mean over positives of the precision at each positive's rank.

    Ranks by descending score; ties keep input order (stable sort), as EgoVLP's `np.argsort(-s)`
    does for distinct scores. NaN when there is no positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"average_precision: scores {scores.shape} and labels {labels.shape} must be equal 1-D shapes")
    num_pos = labels.sum()
    if num_pos == 0:
        return float("nan")
    tp = labels[np.argsort(-scores, kind="stable")]
    precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
    return float(precision[tp].sum() / num_pos)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Charades-Ego mAP (EgoVLP `charades_metrics`): videos without any label get -inf scores,
    AP per class, mean over the classes that have at least one positive."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    labels = np.asarray(labels).astype(bool)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"mean_average_precision: scores {scores.shape} and labels {labels.shape} "
                         "must both be [num_videos, num_classes]")
    scores[~labels.any(axis=1)] = -np.inf
    aps = np.array([average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])])
    valid = ~np.isnan(aps)
    return {"mAP": 100.0 * float(aps[valid].mean()) if valid.any() else float("nan"),
            "num": int(scores.shape[0]), "num_classes_with_positives": int(valid.sum())}


def retrieval_metrics(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """EgoMCQ: accuracy overall and per group ("inter" / "intra")."""
    out: dict[str, Any] = {"accuracy": _pct(sum(bool(r["correct"]) for r in rows), len(rows)), "num": len(rows)}
    for group, res in accuracy_by(rows, lambda r: r.get("group")).items():
        out[f"{group}_accuracy"] = res["accuracy"]
        out[f"{group}_num"] = res["num"]
    return out
