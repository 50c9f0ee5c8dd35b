"""Task folders for the training tests, built on the session's synthetic mp4 dataset."""

from __future__ import annotations


import pytest
import torch

from fixtures.clips import write_task  # noqa: F401  (re-exported for the training tests)


@pytest.fixture(autouse=True)
def _few_threads():
    # 2 cores shared with other test runs: one intra-op thread keeps timings predictable
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
