"""metrics.json's numbers on a hand-checked example."""

from __future__ import annotations

import numpy as np

from pytrain.training.metrics import classification_report, top_k_accuracy


def test_classification_report_on_a_hand_checked_example():
    labels = np.array([0, 0, 1, 1, 2])
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.5, 0.1, 0.4]])
    report = classification_report(labels, scores, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["accuracy"] == 0.6
    assert report["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["per_class"]["b"]["precision"] == 2 / 3 and report["per_class"]["b"]["recall"] == 1.0
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["top_k"] == {"top1": 0.6, "top3": 1.0}


def test_top_k_counts_the_true_label_among_the_k_best():
    scores = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    assert top_k_accuracy(np.array([2, 2]), scores, 1) == 0.0
    assert top_k_accuracy(np.array([2, 2]), scores, 2) == 0.5
