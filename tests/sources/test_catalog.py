"""The video catalog: incremental ``sync`` on real PostgreSQL and real mp4 files, and training's
pre-scan starting from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.clips import make_bad_files
from fixtures.processes import orchestrator_env
from pytrain.db import VideoCatalog
from pytrain.errors import ConfigurationError
from pytrain.sources import sync_sources
from pytrain.sources.catalog import seed_scan_results
from pytrain.spec import TaskSpec, read_manifest
from pytrain.task_columns import SOURCE_NAME_PATTERN


@pytest.fixture
def dataset(settings, synthetic_sources) -> Path:
    """``dataset1`` with 2 clips in each of 3 class folders (cooking, drinking, eating) and a ``broken_x`` folder of bad files."""
    root = settings.sources_dir
    for folder in ("cooking_cuttingbread", "drinking_water", "eating_soup"):
        source = synthetic_sources / "dataset1" / folder
        target = root / "dataset1" / folder
        target.mkdir(parents=True)
        for clip in sorted(source.glob("*.mp4"))[:2]:
            shutil.copy2(clip, target / clip.name)
    make_bad_files(root / "dataset1" / "broken_x")
    return root / "dataset1"


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_sync_catalogues_every_file_with_metadata_and_bad_files_with_reasons(settings, engine, dataset):
    calls: list[tuple[str, int, int]] = []
    result = sync_sources(settings, engine=engine, jobs=2, progress=lambda *call: calls.append(call))
    done = result.catalog["dataset1"]
    assert len(done.probed) == 9 and done.unchanged == 0 and done.deleted == []
    assert sorted(done.bad) == ["broken_x/empty.mp4", "broken_x/notes.mp4", "broken_x/truncated.mp4"]
    assert done.bad["broken_x/empty.mp4"] == "the file is empty"
    assert sorted(c[1] for c in calls) == list(range(1, 10)) and {c[2] for c in calls} == {9}
    rows = {row["path"]: row for row in VideoCatalog(engine).videos(["dataset1"])}
    good = rows["eating_soup/clip_000.mp4"]
    assert (good["status"], good["reason"], good["width"], good["height"], good["codec"]) == ("ok", None, 64, 64, "h264")
    assert good["frame_count"] > 0 and good["fps"] > 0 and good["duration_s"] > 0
    assert good["size_bytes"] == (dataset / "eating_soup" / "clip_000.mp4").stat().st_size
    assert len(good["content_hash"]) == 32
    assert {rows[p]["status"] for p in done.bad} == {"bad"}


def test_second_sync_probes_only_touched_and_new_files_and_forgets_deleted_ones(settings, engine, dataset):
    sync_sources(settings, engine=engine, jobs=2)
    assert sync_sources(settings, engine=engine).catalog["dataset1"].probed == []
    _touch(dataset / "eating_soup" / "clip_000.mp4")
    shutil.copy2(dataset / "eating_soup" / "clip_001.mp4", dataset / "eating_soup" / "clip_new.mp4")
    (dataset / "drinking_water" / "clip_000.mp4").unlink()
    again = sync_sources(settings, engine=engine, jobs=2).catalog["dataset1"]
    assert again.probed == ["eating_soup/clip_000.mp4", "eating_soup/clip_new.mp4"]
    assert again.deleted == ["drinking_water/clip_000.mp4"] and again.unchanged == 7
    rows = {row["path"]: row for row in VideoCatalog(engine).videos(["dataset1"])}
    assert "drinking_water/clip_000.mp4" not in rows
    assert rows["eating_soup/clip_000.mp4"]["mtime_ns"] == (dataset / "eating_soup" / "clip_000.mp4").stat().st_mtime_ns
    assert rows["eating_soup/clip_new.mp4"]["content_hash"] == rows["eating_soup/clip_001.mp4"]["content_hash"]


def test_sync_without_a_decoder_names_the_package_and_no_probe(settings, engine, dataset, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "decord" else real(name, *a))
    with pytest.raises(ConfigurationError, match="needs the decord decoder") as info:
        sync_sources(settings, engine=engine)
    assert "--no-probe" in info.value.hint
    assert sync_sources(settings, engine=engine, probe=False).catalog == {}


def test_training_prescan_probes_only_files_changed_since_the_catalog(settings, engine, dataset, tmp_path, monkeypatch):
    from fixtures.clips import write_task
    import pytrain.training.train as train_mod

    sync_sources(settings, engine=engine, jobs=2)
    task = tmp_path / "task"
    rows = [(f"dataset1/{p}", p.partition("_")[0].partition("/")[0], s)
            for p, s in [("cooking_cuttingbread/clip_000.mp4", "train"), ("cooking_cuttingbread/clip_001.mp4", "test"),
                         ("eating_soup/clip_000.mp4", "train"), ("eating_soup/clip_001.mp4", "test"), ("broken_x/notes.mp4", "train")]]
    rows[-1] = (rows[-1][0], "cooking", "train")
    spec = write_task(task, settings.sources_dir, rows=rows)
    videos = VideoCatalog(engine).verdicts(["dataset1"])
    assert seed_scan_results(task, read_manifest(task), videos, spec.num_frames, spec.height, spec.width) == 5
    _touch(dataset / "eating_soup" / "clip_001.mp4")  # changed after the sync: training must look again
    scanned: list[list[str]] = []
    real_scan = train_mod.scan_videos
    monkeypatch.setattr(train_mod, "scan_videos", lambda paths, *a, **kw: scanned.append([Path(p).name for p in paths]) or real_scan(paths, *a, **kw))
    by_split, skipped = train_mod._prepare_data(TaskSpec.load(task), train_mod.TrainConfig.from_options({}), task, settings.sources_dir,
                                                train_mod._Distributed(), processes=1)
    assert scanned == [["clip_001.mp4"]]
    notes = next(v for v in videos if v["path"] == "broken_x/notes.mp4")
    assert skipped == [{"path": "dataset1/broken_x/notes.mp4", "reason": notes["reason"]}]  # the catalog's verdict
    assert len(by_split["train"]) == 2 and len(by_split["test"]) == 2


def test_sources_sync_reports_a_file_name_that_is_not_utf8_and_catalogs_the_rest(settings, engine, dataset):
    """``caf\\xe9.mp4`` (Latin-1 bytes) used to end ``pytrain sources sync`` in a UnicodeEncodeError
    traceback: PostgreSQL cannot hold the name. It is left out, reported, and the rest is catalogued."""
    good = dataset / "eating_soup" / "clip_000.mp4"
    shutil.copy2(good, os.path.join(os.fsencode(good.parent), b"caf\xe9.mp4"))
    os.mkdir(os.path.join(os.fsencode(dataset), b"caf\xe9_x"))
    shutil.copy2(good, os.path.join(os.fsencode(dataset), b"caf\xe9_x", b"clip.mp4"))
    os.mkdir(os.path.join(os.fsencode(dataset.parent), b"caf\xe9"))  # a dataset folder
    env = orchestrator_env(settings, "sync", lease_seconds=5, heartbeat_seconds=1, poll_seconds=1)
    proc = subprocess.run([sys.executable, "-m", "pytrain.cli.main", "sources", "sync", "--jobs", "2"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "catalog dataset1: probed 9 (3 bad), unchanged 0, forgotten 0" in lines
    assert "skipped dataset1/eating_soup/caf\\xe9.mp4: its name is not valid UTF-8 (rename it, e.g. with convmv)" in lines
    assert "skipped dataset1/caf\\xe9_x/: its name is not valid UTF-8 (rename it, e.g. with convmv)" in lines
    assert f"skipped caf\\xe9: the name must match {SOURCE_NAME_PATTERN}" in lines
    rows = VideoCatalog(engine).videos(["dataset1"])
    assert len(rows) == 9 and "eating_soup/clip_000.mp4" in {row["path"] for row in rows}


LIST_FILES = """
import json, sys
from pytrain.sources.catalog import list_video_files
print(json.dumps(list_video_files(sys.argv[1])))
"""


def test_sync_reports_an_unreadable_class_folder_and_keeps_its_catalog_rows(settings, engine, dataset, monkeypatch):
    import pytrain.sources.catalog as catalog_mod

    sync_sources(settings, engine=engine, jobs=2)
    (dataset / "drinking_water").chmod(0)
    as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []  # root reads any folder
    try:
        proc = subprocess.run([*as_user, sys.executable, "-c", LIST_FILES, str(dataset)], capture_output=True, text=True, timeout=120)
    finally:
        (dataset / "drinking_water").chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    files, skipped = json.loads(proc.stdout)
    assert skipped == {"drinking_water/": "cannot read the folder: Permission denied"}
    assert len(files) == 7 and not any(path.startswith("drinking_water/") for path in files)
    # What sync does with that listing (this process may read any folder, so it is handed over):
    monkeypatch.setattr(catalog_mod, "list_video_files", lambda _: ({p: tuple(s) for p, s in files.items()}, skipped))
    again = sync_sources(settings, engine=engine).catalog["dataset1"]
    assert (again.probed, again.deleted, again.skipped) == ([], [], skipped)
    assert len(VideoCatalog(engine).videos(["dataset1"])) == 9  # the unread folder's files are not "gone"
