"""Metrics against hand-computed values: AP / mAP (EgoVLP-style), MCQ breakdowns, EgoMCQ groups."""
import math

import numpy as np
import pytest

from exo2ego_jax.eval import metrics


def test_average_precision_hand_computed():
    # Ranked by score: pos, neg, pos, neg, pos -> precisions at positives 1/1, 2/3, 3/5.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 1])
    assert metrics.average_precision(scores, labels) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # Input order does not matter, only the scores.
    perm = np.array([3, 0, 4, 1, 2])
    assert metrics.average_precision(scores[perm], labels[perm]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert metrics.average_precision(np.array([0.1, 0.2]), np.array([1, 1])) == 1.0
    assert math.isnan(metrics.average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_mean_average_precision_egovlp_rules():
    scores = np.array([[0.9, 0.1, 0.5],
                       [0.2, 0.8, 0.4],
                       [0.6, 0.3, 0.9],    # this video has no label: pushed to the bottom
                       [0.1, 0.7, 0.2]])
    labels = np.array([[1, 0, 0],
                       [0, 1, 0],
                       [0, 0, 0],
                       [1, 0, 0]])
    # class 0: order v0, v1, v3 (v2 is -inf) -> pos, neg, pos -> (1 + 2/3) / 2
    # class 1: order v1, v3, v0 -> pos, neg, neg -> 1
    # class 2: no positive -> excluded from the mean
    out = metrics.mean_average_precision(scores, labels)
    assert out["mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)
    assert out["num_classes_with_positives"] == 2 and out["num"] == 4
    with pytest.raises(ValueError, match=r"scores \(4, 3\) and labels \(4, 2\)"):
        metrics.mean_average_precision(scores, labels[:, :2])


def test_mcq_metrics_breakdowns():
    rows = [
        dict(answer_index=1, pred_index=1, correct=True, category="hands", view="exo"),
        dict(answer_index=1, pred_index=0, correct=False, category="hands", view="ego"),
        dict(answer_index=0, pred_index=None, correct=False, category="gaze", view="exo"),
        dict(answer_index=2, pred_index=2, correct=True, category="gaze", view="ego"),
        dict(answer_index=None, pred_index=2, correct=False, category="gaze", view="ego"),  # no public answer
    ]
    m = metrics.mcq_metrics(rows)
    assert m["accuracy"] == 50.0 and m["num"] == 4 and m["num_unlabelled"] == 1 and m["unparsed"] == 1
    assert m["per_category"] == {"gaze": {"accuracy": 50.0, "num": 2}, "hands": {"accuracy": 50.0, "num": 2}}
    assert m["per_view"] == {"ego": {"accuracy": 50.0, "num": 2}, "exo": {"accuracy": 50.0, "num": 2}}
    assert m["per_view_category"]["exo/gaze"] == {"accuracy": 0.0, "num": 1}
    assert m["per_view_category"]["ego/gaze"] == {"accuracy": 100.0, "num": 1}
    plain = metrics.mcq_metrics([dict(answer_index=0, pred_index=0, correct=True, category=None, view=None)])
    assert plain == {"accuracy": 100.0, "num": 1, "num_unlabelled": 0, "unparsed": 0}


def test_retrieval_metrics_per_group():
    rows = [dict(group="inter", correct=True), dict(group="inter", correct=True),
            dict(group="inter", correct=False), dict(group="intra", correct=False)]
    m = metrics.retrieval_metrics(rows)
    assert m["accuracy"] == 50.0
    assert m["inter_accuracy"] == pytest.approx(200 / 3) and m["inter_num"] == 3
    assert m["intra_accuracy"] == 0.0 and m["intra_num"] == 1


# ---- EPIC-KITCHENS-100 multi-instance retrieval ---------------------------------------------
MIR_SIM = np.array([[0.2, 0.9, 0.1],
                    [0.8, 0.3, 0.6]])  # [videos, sentences]
MIR_REL = np.array([[1.0, 0.5, 0.0],
                    [0.0, 1.0, 1.0]])


def test_mir_map_hand_computed():
    # v2t row 0: ranked s1 (0.5), s0 (1), s2 (0): one item of relevance 1, at rank 2 -> AP 1/2
    #   (0.5 is not relevant for mAP: only relevance exactly 1 counts).
    # v2t row 1: ranked s0 (0), s2 (1), s1 (1) -> (1/2 + 2/3) / 2 = 7/12.
    np.testing.assert_allclose(metrics.mir_average_precision(MIR_SIM, MIR_REL), [1 / 2, 7 / 12])
    # t2v: s0 ranks v1, v0 -> 1/2; s1 ranks v0 (0.5), v1 (1) -> 1/2; s2 ranks v1 (1) first -> 1.
    np.testing.assert_allclose(metrics.mir_average_precision(MIR_SIM.T, MIR_REL.T), [1 / 2, 1 / 2, 1])


def test_mir_ndcg_hand_computed():
    l3 = math.log2(3)
    # v2t row 0: k = 2 relevant (>0); DCG = 0.5/log2(2) + 1/log2(3); IDCG = 1 + 0.5/log2(3).
    # v2t row 1: k = 2; DCG = 0 + 1/log2(3); IDCG = 1 + 1/log2(3).
    v2t = [(0.5 + 1 / l3) / (1 + 0.5 / l3), (1 / l3) / (1 + 1 / l3)]
    np.testing.assert_allclose(metrics.mir_ndcg(MIR_SIM, MIR_REL), v2t)
    # t2v: s0 (k=1) retrieves v1 (rel 0) first -> 0; s1 (k=2) -> same as v2t row 0; s2 (k=1) -> 1.
    t2v = [0.0, v2t[0], 1.0]
    np.testing.assert_allclose(metrics.mir_ndcg(MIR_SIM.T, MIR_REL.T), t2v)
    m = metrics.multi_instance_retrieval_metrics(MIR_SIM, MIR_REL)
    assert m["mAP"] == pytest.approx(100 * ((1 / 2 + 7 / 12) / 2 + (1 / 2 + 1 / 2 + 1) / 3) / 2)  # 60.42
    assert m["nDCG"] == pytest.approx(100 * (np.mean(v2t) + np.mean(t2v)) / 2)
    assert (m["num_videos"], m["num_sentences"]) == (2, 3)


def test_mir_ndcg_matches_the_official_worked_example():
    # The EPIC-KITCHENS nDCG module's own self-check (3 x 4 matrices, expected 0.9371789900735429).
    sim = np.array([[1.0, 0.7, 0.4, 0.0], [0.3, 0.9, 0.6, 0.1], [0.2, 0.5, 0.8, 0.4]])
    rel = np.array([[1.0, 0.5, 0.25, 0.0], [0.0, 1.0, 0.4, 0.0], [0.5, 0.3, 1.0, 0.0]])
    assert metrics.mir_ndcg(sim, rel).mean() == pytest.approx(0.9371789900735429, abs=1e-12)


def test_mir_rejects_rows_without_relevant_items():
    with pytest.raises(ValueError, match="1 query rows have no item of relevance 1"):
        metrics.mir_average_precision(np.eye(2), np.array([[1.0, 0.0], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="must be equal 2-D shapes"):
        metrics.multi_instance_retrieval_metrics(np.eye(2), np.eye(3))
