"""Imbalanced data (issue 13): the ``class_weights: balanced`` task option raises the minority
class's recall on a 10:1 synthetic dataset (fixed seed, CPU, deterministic algorithms).

The classes overlap, as real ones do: 6 of the 40 ``walking`` clips look like the 4 ``drinking``
clips. Trained on the plain loss, the best answer for that look is the majority class (6 > 4);
with balanced weights it is the minority (4 x 5.5 > 6 x 0.55)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.clips import train_task, write_task
from orchestrator.test_cli import cli  # noqa: F401 -- the in-process CLI fixture
from pytrain.errors import ConfigurationError
from pytrain.sources.synthetic import make_dataset
from pytrain.training.metrics import weak_classes
from pytrain.task_options import TrainConfig, balanced_class_weights


@pytest.fixture(scope="module")
def imbalanced_sources(tmp_path_factory):
    """``dataset1``: 34 ``walking_dog`` and 10 ``drinking_water`` clips, 32x32."""
    root = tmp_path_factory.mktemp("imbalanced")
    make_dataset(root / "dataset1", folders=("walking_dog",), clips_per_folder=34, height=32, width=32)
    make_dataset(root / "dataset1", folders=("drinking_water",), clips_per_folder=10, height=32, width=32)
    return root


def _minority_recall(tmp_path, sources, **extra) -> tuple[float, dict]:
    """The minority class's recall over all splits, and ``metrics.json``."""
    # (folder, label, clip numbers, train/val/test counts): walking 34 + 6 drinking-looking = 40, drinking 4
    plan = (("walking_dog", "walking", range(34), (26, 4)), ("drinking_water", "walking", range(4, 10), (4, 1)),
            ("drinking_water", "drinking", range(4), (2, 1)))
    rows = []
    for folder, label, numbers, (n_train, n_val) in plan:
        for k, i in enumerate(numbers):
            rows.append((f"dataset1/{folder}/clip_{i:03d}.mp4", label, "train" if k < n_train else "val" if k < n_train + n_val else "test"))
    task = tmp_path / ("task-" + "-".join(f"{k}{v}" for k, v in extra.items()) if extra else tmp_path / "task-plain")
    write_task(task, sources, rows=rows, epochs=4, extra={"hflip": 0.0, "label_smoothing": 0.0, **extra})
    train_task(task)
    saved = json.loads((task / "metrics.json").read_text())
    confusion = sum(np.array(saved["splits"][s]["confusion_matrix"]) for s in ("train", "val", "test"))
    minority = ["drinking", "walking"].index("drinking")
    return confusion[minority, minority] / confusion[minority].sum(), saved


def test_balanced_class_weights_raise_the_minority_recall(tmp_path, imbalanced_sources):
    plain, plain_metrics = _minority_recall(tmp_path, imbalanced_sources)
    balanced, balanced_metrics = _minority_recall(tmp_path, imbalanced_sources, class_weights="balanced")
    assert (plain, balanced) == (0.0, 1.0)  # seed 0: the plain loss never answers drinking; the balanced one always does
    assert weak_classes(plain_metrics) == {"drinking": {"recall": 0.0, "others": 1.0}}  # what `pytrain show` warns about
    assert weak_classes(balanced_metrics) == {}


def test_balanced_weights_are_inverse_frequency_and_unknown_modes_are_refused():
    assert balanced_class_weights([40, 4]) == [0.55, 5.5]
    with pytest.raises(ConfigurationError, match="class_weights='inverse' is not known"):
        TrainConfig.from_options({"class_weights": "inverse"})


def test_show_names_a_class_far_below_the_others_on_stderr(cli, engine):
    from sqlalchemy import text

    from pytrain.db import TaskQueue

    task_id = TaskQueue(engine).submit({"model_name": "m", "sources": ["d"], "classes": ["drinking", "walking"]})
    per_class = {"drinking": {"recall": 0.1, "support": 4}, "walking": {"recall": 0.9, "support": 40}}
    with engine.begin() as conn:
        conn.execute(text("UPDATE training_tasks SET metrics = CAST(:m AS jsonb) WHERE id = :id"),
                     {"m": json.dumps({"splits": {"test": {"per_class": per_class}}}), "id": task_id})
    code, out, err = cli("show", str(task_id))
    assert code == 0 and json.loads(out)["id"] == task_id
    assert err.startswith("class drinking: test recall 0.10, far below the others' mean 0.90") and "class_weights=balanced" in err
