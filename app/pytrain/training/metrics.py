"""Classification metrics written to ``metrics.json``: accuracy, top-k, per-class P/R/F1, confusion.

Pure numpy, no scikit-learn: the training image stays small.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def top_k_accuracy(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores of ``(N, C)`` ``scores``."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def classification_report(labels: np.ndarray, scores: np.ndarray, class_list: list[str]) -> dict[str, Any]:
    """Metrics of one split.

    Args:
        labels: ``(N,)`` true class indices.
        scores: ``(N, C)`` probabilities or logits.
        class_list: class names, index ``i`` is column ``i``.

    Returns:
        ``{"count", "accuracy", "top_k": {"top1", "top5"...}, "per_class": {name: {"precision",
        "recall", "f1", "support"}}, "macro_f1", "confusion_matrix": [[...]]}``. Precision of a
        class never predicted, and recall of a class absent from ``labels``, are 0.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64).reshape(len(labels), len(class_list))
    num_classes = len(class_list)
    predictions = scores.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(labels, predictions, num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros(num_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    ks = sorted({1, min(5, num_classes)})
    return {
        "count": int(len(labels)),
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else float("nan"),
        "top_k": {f"top{k}": top_k_accuracy(labels, scores, k) for k in ks},
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_list)
        },
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": matrix.tolist(),
    }


#: A class is "far below the others" when its recall is under this share of the others' mean.
WEAK_RECALL_RATIO = 0.5


def weak_classes(metrics: dict[str, Any] | None, split: str = "test") -> dict[str, dict[str, float]]:
    """The classes whose ``split`` recall is far below the others' (``< WEAK_RECALL_RATIO`` of
    their mean), from a task's ``metrics`` (``metrics.json``, or the row's ``metrics`` column).

    Returns:
        ``{class: {"recall", "others"}}`` (``others``: the mean recall of the other classes with
        clips in the split); empty without metrics, per-class figures, or a weak class.
    """
    per_class = ((metrics or {}).get("splits", {}).get(split) or {}).get("per_class") or {}
    recalls = {name: m["recall"] for name, m in per_class.items() if m.get("support")}
    weak = {}
    for name, recall in recalls.items():
        others = [r for n, r in recalls.items() if n != name]
        if others and recall < WEAK_RECALL_RATIO * (mean := sum(others) / len(others)):
            weak[name] = {"recall": recall, "others": mean}
    return weak
