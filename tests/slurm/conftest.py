"""Fixtures for the Slurm runner's tests; the cluster itself is ``tests/fixtures/slurm.py``.

Every test that uses ``slurm_settings`` ends with both nodes back in service and no job of its
worker left in the queue.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from fixtures.slurm import live_jobs, resume_nodes


@pytest.fixture
def slurm_settings(slurm_cluster, settings, monkeypatch):
    """The db fixture's settings on the slurm runner, with a worker id of this test's own and
    3000 MB per node (training tiny with torchrun needs ~1.6 GB); the jobs inherit a quiet, one
    thread environment. Fails the test if a job of its worker is left in the queue."""
    monkeypatch.setenv("PYTRAIN_NUM_WORKERS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    worker_id = f"slurm-test-{time.monotonic_ns()}"
    updated = settings.model_copy(update={"runner": "slurm", "worker_id": worker_id, "slurm_mem": "3000M", "lease_seconds": 20.0})
    yield updated
    left = {job: what for job, what in live_jobs().items() if what.endswith(f"worker={worker_id}")}
    for job in left:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    resume_nodes()
    assert not left, f"jobs left in the queue: {left}"


@pytest.fixture
def cluster_settings(slurm_settings):
    """The settings ``placeholders`` and ``clips`` (tests/fixtures/cluster_tasks.py) register their datasets on."""
    return slurm_settings
