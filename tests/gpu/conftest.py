"""Fixtures of the CUDA tests; self-contained so that ``pytest tests/gpu --confcutdir tests/gpu`` runs
on a bare GPU host (no database or Triton packages, which ``tests/conftest.py``'s plugins import).

Clips and task folders come from ``benchmarks/bench_gpu.py`` (the same helpers its end-to-end
section uses): real H.264 mp4 files made with ``ffmpeg`` or PyAV.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO / "app", REPO / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture(scope="session")
def cuda_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sources root with ``dataset1``: 6 folders (4 classes), 8 clips each, 64x64, H.264.

    Skips the test when this host can make no H.264 clip (no ffmpeg binary, no PyAV).
    """
    import bench_gpu

    root = tmp_path_factory.mktemp("cuda_sources")
    try:
        bench_gpu.make_clips(root / "dataset1", folders=bench_gpu.E2E_FOLDERS, clips_per_folder=8, height=64, width=64, frame_counts=(24, 30, 36))
    except bench_gpu.Skip as exc:
        pytest.skip(str(exc))
    return root
