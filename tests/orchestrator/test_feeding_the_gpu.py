"""What the orchestrator hands training for the shared clip cache and proxies (the catalog digests in
``manifest.csv``), and how a task's data wait is shown (issue 20). Budget: ~5 s (one catalog sync
of 18 tiny clips, a real PostgreSQL)."""

from __future__ import annotations

import shutil

from orchestrator.test_cli import cli  # noqa: F401 -- the in-process CLI fixture
from pytrain.db import TaskQueue, VideoCatalog
from pytrain.orchestrator.prepare import prepare_task
from pytrain.sources import sync_sources
from pytrain.spec import CATALOG_PREFIX, ProgressRecord, data_wait_hint, read_manifest


def test_the_prepared_manifest_carries_each_files_catalog_digest(settings, engine, synthetic_sources):
    for folder in ("cooking_cuttingbread", "walking_dog"):
        shutil.copytree(synthetic_sources / "dataset1" / folder, settings.sources_dir / "dataset1" / folder)
    sync_sources(settings, engine=engine, jobs=2)
    (settings.sources_dir / "dataset1" / "walking_dog" / "clip_005.mp4").write_bytes(
        (synthetic_sources / "dataset1" / "cooking_cuttingbread" / "clip_000.mp4").read_bytes())  # changed since the sync
    queue = TaskQueue(engine)
    task_id = queue.submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "walking"]})
    catalog = VideoCatalog(engine)
    task_dir = prepare_task(queue.get(task_id), settings, registered=None, videos=catalog.verdicts(["dataset1"])).task_dir

    digests = {f"dataset1/{v['path']}": v["content_hash"] for v in catalog.videos(["dataset1"])}
    rows = read_manifest(task_dir)
    assert len(rows) == 16
    for row in rows:
        expected = "" if row.path.endswith("walking_dog/clip_005.mp4") else f"{CATALOG_PREFIX}{digests[row.path]}"
        assert row.content == expected, row  # a file changed since the sync has no digest: keyed by its stamp
    assert (task_dir / "manifest.csv").read_text().splitlines()[0] == "path,label,split,content"


def test_show_prints_a_hint_when_an_epoch_waited_for_data(cli, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]})
    epoch = {"event": "epoch", "epoch": 1, "epochs": 5, "train_loss": 1.0, "seconds": 10.0, "data_wait_seconds": 6.5, "clips_per_second": 3.2}
    queue.heartbeat(queue.claim("w", 30), 30, epoch)
    code, out, err = cli("show", str(task_id))
    assert code == 0
    assert err.strip() == data_wait_hint(ProgressRecord.from_dict(epoch))
    assert err.startswith("epoch 1: the training step waited 6.5 s of 10.0 s (65%) for data")
    for remedy in ("clip cache", "--proxies", "--num-workers", "PYTRAIN_DECODER=nvdec"):
        assert remedy in err


def test_the_progress_line_shows_the_data_wait_and_a_short_wait_gets_no_hint():
    from pytrain.spec import format_progress

    record = ProgressRecord(event="epoch", epoch=2, epochs=5, clips_per_second=40.0, seconds=10.0, data_wait_seconds=2.0)
    assert format_progress(record) == "epoch 2/5, 40.0 clips/s, data wait 2.0 s"
    assert data_wait_hint(record) is None  # a fifth of the epoch: no hint
    assert data_wait_hint(ProgressRecord(event="epoch", epoch=2, seconds=10.0, data_wait_seconds=2.01)) is not None
