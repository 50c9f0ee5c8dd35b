"""Fixtures for the Ray runner's tests; the cluster itself is ``tests/fixtures/ray.py``.

Every test that uses ``ray_settings`` ends with both worker nodes alive and no live job of its
worker on the cluster.
"""

from __future__ import annotations

import sys
import time

import pytest
from fixtures.ray import WORKER_NODES, WORKER_RESOURCE


@pytest.fixture
def ray_settings(ray_cluster, settings, monkeypatch):
    """The db fixture's settings on the ray runner, with a worker id of this test's own; the jobs
    inherit a quiet, one-thread environment (PYTRAIN_* and OMP_* reach them). Fails the test if a
    job of its worker is left running."""
    from pytrain.runners.ray import RayCluster

    monkeypatch.setenv("PYTRAIN_NUM_WORKERS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    worker_id = f"ray-test-{time.monotonic_ns()}"
    updated = settings.model_copy(update={
        "runner": "ray", "worker_id": worker_id, "ray_address": ray_cluster.address, "ray_python": sys.executable,
        "ray_resources": {WORKER_RESOURCE: 1.0}, "lease_seconds": 20.0,
    })
    yield updated
    cluster = RayCluster(ray_cluster.address)
    left = [job.submission_id for job in cluster.jobs() if not job.ended and (job.metadata or {}).get("pytrain_worker") == worker_id]
    for job in left:
        cluster.stop(job)
    for name in WORKER_NODES:  # a test that stopped a node and failed before restarting it
        if ray_cluster.node_id(name) is None:
            ray_cluster.start_node(name).communicate(timeout=120)
    ray_cluster.wait_nodes(*WORKER_NODES)
    assert not left, f"Ray jobs left running: {left}"


@pytest.fixture
def cluster_settings(ray_settings):
    """The settings ``placeholders`` and ``clips`` (tests/fixtures/cluster_tasks.py) register their datasets on."""
    return ray_settings
