"""Shared pytest set-up. Fixtures live in plugin modules under ``tests/fixtures/``, one per
external boundary, so each part of the pipeline owns its own:

- ``fixtures.clips``  -- real mp4 datasets made with PyAV / ffmpeg
- ``fixtures.db``     -- a real PostgreSQL server and a fresh database per test
- ``fixtures.triton`` -- the real ``tritonserver`` from nvidia-pytriton
- ``fixtures.docker`` -- a real Docker engine and a local base image
- ``fixtures.slurm``  -- a real two-node Slurm cluster on this host (scripts/start_slurm.sh)
- ``fixtures.docs``   -- the documentation site built with ``mkdocs build --strict``
- ``fixtures.mlflow`` -- a real ``mlflow server`` on the test PostgreSQL (experiment tracking)
- ``fixtures.ray``    -- a real Ray cluster on this host: a head and two worker nodes (``ray start``)
- ``fixtures.cluster_tasks`` -- the rows, datasets and helpers of the cluster runners' tests (slurm, ray)
"""

import atexit
import os
import shutil
import tempfile

# Experiment tracking is on by default (PYTRAIN_MLFLOW); tests turn it on where they test it (the
# ``tracking_settings`` fixture, the demo), so no other test, nor the orchestrators tests start as
# processes, builds an MLflow store.
os.environ.setdefault("PYTRAIN_MLFLOW", "off")
# The shared clip cache (on by default) of every training this session starts: a folder of the
# session's own, not <data_dir>/clip_cache in the checkout.
if "PYTRAIN_CLIP_CACHE_DIR" not in os.environ:
    os.environ["PYTRAIN_CLIP_CACHE_DIR"] = _session_cache = tempfile.mkdtemp(prefix="pytrain-clip-cache-")
    atexit.register(shutil.rmtree, _session_cache, ignore_errors=True)

pytest_plugins = ["fixtures.clips", "fixtures.db", "fixtures.triton", "fixtures.docker", "fixtures.slurm", "fixtures.docs", "fixtures.mlflow", "fixtures.ray", "fixtures.cluster_tasks"]
