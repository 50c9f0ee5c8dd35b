"""Helpers for the sources tests: dataset trees of placeholder ``.mp4`` files.

Class resolution and splitting only look at names and paths, never at video content, so these
tests use small placeholder files; decoding is tested with real mp4s by the training part.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def write_tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """Create ``root/<dataset>/<folder>/clip_NNN.mp4`` with ``n`` files per folder."""
    for dataset, folders in layout.items():
        (root / dataset).mkdir(parents=True, exist_ok=True)
        for folder, n in folders.items():
            (root / dataset / folder).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / dataset / folder / f"clip_{i:03d}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return root


@pytest.fixture
def tree(tmp_path: Path):
    """``tree(layout)`` -> a sources root under ``tmp_path`` with that layout."""
    root = tmp_path / "sources"
    root.mkdir()
    return lambda layout: write_tree(root, layout)
