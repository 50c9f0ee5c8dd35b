"""Task folders for the training tests, built on the session's synthetic mp4 dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from pytrain.spec import MANIFEST, TaskSpec


@pytest.fixture(autouse=True)
def _few_threads():
    # 2 cores shared with other test runs: one intra-op thread keeps timings predictable
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_task(task_dir: Path, sources_root: Path, *, rows: list[tuple[str, str, str]] | None = None, **spec_fields) -> TaskSpec:
    """Write ``task.json`` and ``manifest.csv`` into ``task_dir``.

    Without ``rows``, every clip of ``sources_root/dataset1`` is listed with its class (the text
    before the first underscore of its folder) and a split by clip number: 0-4 train, 5 val, 6-7 test.
    """
    task_dir.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = []
        for clip in sorted((sources_root / "dataset1").glob("*/*.mp4")):
            number = int(clip.stem.split("_")[-1])
            split = "train" if number < 5 else "val" if number == 5 else "test"
            rows.append((clip.relative_to(sources_root).as_posix(), clip.parent.name.partition("_")[0], split))
    classes = sorted({label for _, label, _ in rows})
    fields = dict(task_id=1, model_name="test_model", class_list=classes, architecture="tiny", num_frames=8, height=32, width=32,
                  epochs=6, batch_size=4, shuffle_size=300, learning_rate=3e-3, seed=0, sources_root=str(sources_root),
                  extra={"hflip": 0.0})
    fields.update(spec_fields)
    spec = TaskSpec(**fields)
    spec.save(task_dir)
    with (task_dir / MANIFEST).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return spec
