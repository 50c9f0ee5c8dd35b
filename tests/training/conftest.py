"""Task folders for the training tests, built on the session's synthetic mp4 dataset."""

from __future__ import annotations


from pathlib import Path

import pytest
import torch

from fixtures.clips import clip_rows, write_task  # noqa: F401  (write_task re-exported for the training tests)
from pytrain.sources.synthetic import make_dataset

#: A tiny, fast run: the columns a task row and a task.json share.
SMALL = {"architecture": "tiny", "num_frames": 8, "height": 32, "width": 32, "batch_size": 4}


@pytest.fixture(scope="session")
def small_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dataset1`` with 6 real 32x32 clips in each of cooking_pan, drinking_tea, walking_dog
    (defined here once: a session fixture imported into several modules is built once per module)."""
    root = tmp_path_factory.mktemp("small_sources")
    make_dataset(root / "dataset1", folders=("cooking_pan", "drinking_tea", "walking_dog"), clips_per_folder=6, height=32, width=32,
                 frame_counts=(24,))
    return root


def small_rows(sources: Path) -> list[tuple[str, str, str]]:
    """Manifest rows of :func:`small_sources`: clips 0-3 train, 4 val, 5 test per class."""
    return clip_rows(sources, val_clip=4)


@pytest.fixture(autouse=True)
def _few_threads():
    # 2 cores shared with other test runs: one intra-op thread keeps timings predictable
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
