"""``pytrain tasks`` names a finished task's class whose test recall is far below the others'
(the rule ``pytrain show`` warns with: :func:`pytrain.training.metrics.weak_classes`).

Budget: milliseconds (renders the table of two rows; no database: the rows are the mappings
``TaskQueue.list`` returns, whose query and parsing ``tests/orchestrator/test_cli.py`` covers).
"""

from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Console

from pytrain.cli.tasks import _tasks_table, _weak_recall_text


def metrics(recalls: dict[str, float]) -> dict:
    """A task's ``metrics`` with the test split's per-class recall (every class has clips)."""
    return {"splits": {"test": {"per_class": {name: {"recall": r, "support": 5} for name, r in recalls.items()}}}}


def row(task_id: int, task_metrics: dict | None) -> dict:
    return {"id": task_id, "model_name": "kitchen", "status": "succeeded", "priority": 0, "attempts": 1, "epochs": 3,
            "progress": {"event": "done", "epoch": 3, "epochs": 3, "train_loss": 0.5, "test_accuracy": 0.7},
            "metrics": task_metrics, "version": 2, "worker_id": "w1", "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
            "error": None}


def test_tasks_table_shows_the_weakest_class_recall_only_when_far_below_the_others() -> None:
    weak = metrics({"cooking": 0.9, "drinking": 0.2, "eating": 1.0, "pouring[1]": 0.1})
    even = metrics({"cooking": 0.9, "drinking": 0.8})
    console = Console(record=True, width=250)
    console.print(_tasks_table([row(1, weak), row(2, even), row(3, None)]))
    lines = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if line.count("│") > 2}

    assert "epoch 3/3, loss 0.500, test acc 0.70, recall min 0.10 (pouring[1] +1)" in lines["1"]
    assert "recall" not in lines["2"] and "recall" not in lines["3"]
    assert _weak_recall_text(metrics({"cooking": 0.9, "drinking": 0.2, "eating": 1.0})) == "recall min 0.20 (drinking)"
