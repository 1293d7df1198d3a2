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


def _check_pair(similarity: np.ndarray, relevance: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(similarity, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.float64)
    if sim.shape != rel.shape or sim.ndim != 2:
        raise ValueError(f"{what}: similarity {sim.shape} and relevance {rel.shape} must be equal 2-D shapes")
    return sim, rel


def mir_average_precision(similarity: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """[N] AP of each query row (EPIC-KITCHENS-100 MIR `calculate_mAP`, before the mean).

    Items are ranked by descending similarity; only relevance exactly 1 counts as relevant;
    AP = sum over relevant ranks k of precision@k / number of relevant items.
    """
    sim, rel = _check_pair(similarity, relevance, "mir_average_precision")
    order = np.argsort(-sim, axis=1, kind="stable")
    ranked = np.take_along_axis(rel, order, axis=1) == 1
    hits = np.cumsum(ranked, axis=1)
    precision = np.where(ranked, hits / np.arange(1, sim.shape[1] + 1), 0.0)
    num_relevant = ranked.sum(axis=1)
    if (num_relevant == 0).any():
        raise ValueError(f"mir_average_precision: {int((num_relevant == 0).sum())} query rows have no item of "
                         "relevance 1 (the official relevance matrix has one for every video and sentence); "
                         "check that the relevance matrix matches the CSV rows")
    return precision.sum(axis=1) / num_relevant


def mir_ndcg(similarity: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """[N] nDCG of each query row (EPIC-KITCHENS-100 MIR `calculate_nDCG`, before the mean).

    DCG sums rel_i / log2(i + 1) over the first k retrieved items (rank i from 1), where k is the
    number of items with relevance > 0 for that query; IDCG is the same sum with the items in
    descending relevance. Ranking as the official code: `argsort(similarity)` reversed.
    """
    sim, rel = _check_pair(similarity, relevance, "mir_ndcg")
    n_items = sim.shape[1]
    k_mask = np.sort(rel, axis=1)[:, ::-1] > 0  # first k positions of each row
    discount = np.log2(np.arange(n_items) + 2.0)

    def dcg(scores: np.ndarray) -> np.ndarray:
        order = np.argsort(scores, axis=1, kind="stable")[:, ::-1]
        return np.sum(np.take_along_axis(rel, order, axis=1) * k_mask / discount, axis=1)

    ideal = dcg(rel)
    if (ideal == 0).any():
        raise ValueError(f"mir_ndcg: {int((ideal == 0).sum())} query rows have no relevant item")
    return dcg(sim) / ideal


def multi_instance_retrieval_metrics(similarity: np.ndarray, relevance: np.ndarray) -> dict[str, Any]:
    """EPIC-KITCHENS-100 MIR: mAP and nDCG for video->text (rows of [videos, sentences]) and
    text->video (the transpose), and their averages, in percent."""
    sim, rel = _check_pair(similarity, relevance, "multi_instance_retrieval_metrics")
    out = {
        "mAP_v2t": 100.0 * float(mir_average_precision(sim, rel).mean()),
        "mAP_t2v": 100.0 * float(mir_average_precision(sim.T, rel.T).mean()),
        "nDCG_v2t": 100.0 * float(mir_ndcg(sim, rel).mean()),
        "nDCG_t2v": 100.0 * float(mir_ndcg(sim.T, rel.T).mean()),
    }
    out["mAP"] = (out["mAP_v2t"] + out["mAP_t2v"]) / 2
    out["nDCG"] = (out["nDCG_v2t"] + out["nDCG_t2v"]) / 2
    out["num_videos"], out["num_sentences"] = int(sim.shape[0]), int(sim.shape[1])
    return out
