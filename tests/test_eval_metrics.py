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
