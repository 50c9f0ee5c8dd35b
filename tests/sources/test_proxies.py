"""Training proxies (issue 20): made once per video by ffmpeg, found by training through the catalog
digest in ``manifest.csv``, faster to load, and a model trained on them agrees with itself on the
originals.

The 1280x720 H.264 clips are 1 s long (25 frames): 3 classes x 4 clips, made by ffmpeg's lavfi
sources with sensor-like noise. Budget (2 cores): the module's clips and proxies ~15 s; the loader comparison ~10 s; the
training + agreement through the session's Triton ~15 s; the catalog test ~10 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fixtures.clips import write_task
from orchestrator.test_cli import cli  # noqa: F401 -- the in-process CLI fixture
from pytrain.proxies import PROXY_GOP, make_proxies, pick_proxy, proxy_coverage, proxy_path, proxy_sizes
from pytrain.spec import CATALOG_PREFIX, ManifestRow, read_manifest, write_manifest
from pytrain.training.data import ClipDataset, Sample, with_proxies
from pytrain.training.probe import content_hash

#: lavfi source per class: unlike enough for a tiny model, each clip tinted by its own hue.
CLASSES = {"bars_x": "smptehdbars", "pattern_x": "testsrc2", "fractal_x": "mandelbrot"}
CLIPS_PER_CLASS = 4


def _hd_clip(path: Path, source: str, hue: int) -> None:
    """A 1 s 1280x720 H.264 clip with camera-like sensor noise (~3 Mbit/s, as IP cameras send 720p;
    a noiseless test pattern compresses to a third of that and decodes unrealistically cheaply)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"{source}=size=1280x720:rate=25", "-t", "1",
                    "-vf", f"hue=h={hue},noise=alls=12:allf=t+u", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)], check=True)


def _catalog_row(root: Path, rel: str) -> dict:
    """What ``pytrain sources sync`` would store for ``root/dataset1/rel`` (the metadata from decord)."""
    import decord

    path = root / "dataset1" / rel
    reader = decord.VideoReader(str(path), num_threads=1)
    height, width = reader[0].shape[:2]
    fps = float(reader.get_avg_fps())
    return {"dataset": "dataset1", "path": rel, "status": "ok", "content_hash": content_hash(path), "width": width, "height": height,
            "fps": fps, "duration_s": len(reader) / fps, "size_bytes": path.stat().st_size, "frame_count": len(reader)}


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    """``(sources root, catalog rows, ProxyResult)``: the 1280x720 clips and their proxies (short side 256)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (scripts/test.sh installs it with apt)")
    root = tmp_path_factory.mktemp("hd_sources")
    rels = []
    for k, (folder, source) in enumerate(CLASSES.items()):
        for i in range(CLIPS_PER_CLASS):
            rel = f"{folder}/clip_{i:03d}.mp4"
            _hd_clip(root / "dataset1" / rel, source, hue=40 * i + 7 * k)
            rels.append(rel)
    rows = [_catalog_row(root, rel) for rel in rels]
    made = make_proxies(rows, root, 256, jobs=2)
    return root, rows, made


def _samples(root: Path, rows: list[dict], split: str = "train") -> list[Sample]:
    labels = {folder: k for k, folder in enumerate(CLASSES)}
    return [Sample(root / "dataset1" / row["path"], f"dataset1/{row['path']}", labels[row["path"].split("/")[0]], split,
                   f"{CATALOG_PREFIX}{row['content_hash']}") for row in rows]


def test_each_video_gets_a_small_constant_rate_short_gop_proxy_without_audio(hd):
    import av

    root, rows, made = hd
    assert len(made.made) == len(rows) and made.failed == {} and made.fresh == 0
    for row in rows:
        proxy = proxy_path(root, row["content_hash"], 256)
        with av.open(str(proxy)) as container:
            assert [s.type for s in container.streams] == ["video"]
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (456, 256)  # 1280x720 -> short side 256, even
            keyframes = [i for i, packet in enumerate(p for p in container.demux(stream) if p.size) if packet.is_keyframe]
        assert keyframes == list(range(0, row["frame_count"], PROXY_GOP))
    assert made.proxy_bytes < made.source_bytes / 4
    again = make_proxies(rows, root, 256, jobs=2)
    assert (again.made, again.fresh) == ({}, len(rows))  # made once
    print(f"proxies: {made.proxy_bytes / made.seconds / 1e3:.1f} kB per second of 1280x720 video "
          f"({made.proxy_bytes / made.seconds * 3600 / 1e9:.3f} GB per hour) from {made.source_bytes / made.seconds / 1e3:.1f} kB/s")


def test_a_proxy_keeps_the_frame_count_and_timing_of_its_source(hd):
    import decord

    root, rows, _ = hd
    for row in rows[:3]:
        proxy = decord.VideoReader(str(proxy_path(root, row["content_hash"], 256)), num_threads=1)
        assert len(proxy) == row["frame_count"] and float(proxy.get_avg_fps()) == pytest.approx(row["fps"])


def test_training_reads_a_fresh_proxy_only_where_the_clip_fits_in_it(hd, tmp_path, caplog):
    root, rows, _ = hd
    samples = _samples(root, rows)
    assert proxy_sizes(root) == [256]
    picked = with_proxies(samples, root, 112, 112)
    assert all(s.source == "proxy-s256" and s.path == proxy_path(root, r["content_hash"], 256) for s, r in zip(picked, rows))
    assert [s.source for s in with_proxies(samples, root, 288, 288)] == ["original"] * len(rows)  # a larger clip: the originals
    changed = [Sample(s.path, s.rel_path, s.label, s.split, f"{CATALOG_PREFIX}{'0' * 32}") for s in samples[:1]]
    with caplog.at_level("INFO", logger="pytrain.training.data"):
        assert with_proxies(changed, root, 112, 112)[0].source == "original"  # new content: its proxy is not made yet
    assert pick_proxy(root, "", 112, 112, [256]) is None  # no catalog digest, no proxy
    assert "training proxies: 0 of 1 clips read from proxies" in caplog.text


def _first_epoch_rates(originals: list[Sample], proxies: list[Sample]) -> tuple[float, float]:
    """Clips/s of a first epoch (no cache, one process, 16x112x112) over ``originals`` and over
    ``proxies``, the two timed clip by clip in turn so a change of the machine's load hits both."""
    datasets = [ClipDataset(samples, 16, 112, 112, train=True, seed=0) for samples in (originals, proxies)]
    seconds = [0.0, 0.0]
    for i in range(len(originals)):
        for k, dataset in enumerate(datasets):
            start = time.perf_counter()
            dataset[(i, 1)]
            seconds[k] += time.perf_counter() - start
    return len(originals) / seconds[0], len(proxies) / seconds[1]


def test_the_loader_reads_proxies_at_least_5x_faster_than_1280x720_originals(hd):
    root, rows, _ = hd
    originals = _samples(root, rows)
    original_rate, proxy_rate = _first_epoch_rates(originals, with_proxies(originals, root, 112, 112))
    print(f"first-epoch loader, 16x112x112, no cache, one process: originals {original_rate:.1f} clips/s, proxies {proxy_rate:.1f} clips/s")
    assert proxy_rate >= 5 * original_rate


@pytest.mark.triton
def test_a_model_trained_on_proxies_agrees_with_itself_on_the_originals_through_triton(hd, tmp_path, caplog, triton_settings):
    from fixtures.triton import task_record
    from pytrain.client import TritonClient
    from pytrain.publish import publish_task
    from pytrain.training.train import main

    root, rows, _ = hd
    split = {0: "train", 1: "train", 2: "val", 3: "test"}
    manifest = [ManifestRow(f"dataset1/{r['path']}", r["path"].split("_")[0], split[int(r["path"][-5])], f"{CATALOG_PREFIX}{r['content_hash']}")
                for r in rows]
    task = tmp_path / "task"
    write_task(task, root, rows=[(m.path, m.label, m.split) for m in manifest], epochs=3, extra={"hflip": 0.0, "cache": False},
               model_name="proxied", architecture="tiny", num_frames=8, height=32, width=32, batch_size=2, learning_rate=1e-2)
    write_manifest(manifest, task)  # with the catalog digests, as the orchestrator writes it
    with caplog.at_level("INFO", logger="pytrain.training.data"):
        main(argparse.Namespace(task_dir=str(task), sources_root=None, device="cpu", num_workers=0, cache_dir=None))
    assert "training proxies: 6 of 6 clips read from proxies (6 from short side 256)" in caplog.text
    assert publish_task(task, settings=triton_settings, task_record=task_record("proxied")).load_requested is True

    held_out = [r for r in read_manifest(task) if r.split != "train"]  # the val and test clips: never trained on
    with TritonClient(triton_settings.triton_grpc_url) as client:
        on_originals = client.predict("proxied", [root / r.path for r in held_out])
        on_proxies = client.predict("proxied", [proxy_path(root, r.content.removeprefix(CATALOG_PREFIX), 256) for r in held_out])
    agree = sum(a[0].label == b[0].label for a, b in zip(on_originals, on_proxies))
    assert agree / len(held_out) >= 0.98, (agree, len(held_out))


def test_coverage_counts_fresh_and_stale_proxies():
    videos = [{"path": "a.mp4", "status": "ok", "content_hash": "h1"}, {"path": "b.mp4", "status": "ok", "content_hash": "h2new"},
              {"path": "c.mp4", "status": "bad", "content_hash": None}]
    proxies = [{"path": "a.mp4", "short_side": 256, "source_hash": "h1", "size_bytes": 10},
               {"path": "b.mp4", "short_side": 256, "source_hash": "h2old", "size_bytes": 12}]
    assert proxy_coverage(videos, proxies) == {"s256": {"videos": 2, "fresh": 1, "stale": 1, "bytes": 10}}


def test_sync_records_proxies_in_the_catalog_and_a_changed_source_makes_its_proxy_stale(cli, settings, engine, synthetic_sources):
    from pytrain.db import VideoCatalog
    from pytrain.sources import sync_sources

    folder = settings.sources_dir / "dataset1" / "cooking_x"
    folder.mkdir(parents=True)
    clips = sorted((synthetic_sources / "dataset1" / "cooking_cuttingbread").glob("*.mp4"))[:3]
    for clip in clips:
        shutil.copy2(clip, folder / clip.name)
    code, out, err = cli("sources", "sync", "--jobs", "2", "--proxies", "--proxy-size", "32")
    assert code == 0, err
    assert "proxies dataset1 (short side 32): made 3 (" in out and "fresh 0, failed 0" in out
    catalog = VideoCatalog(engine)
    made_bytes = sum(proxy_path(settings.sources_dir, v["content_hash"], 32).stat().st_size for v in catalog.videos(["dataset1"]))
    assert proxy_coverage(catalog.videos(["dataset1"]), catalog.proxies(["dataset1"])) == {
        "s32": {"videos": 3, "fresh": 3, "stale": 0, "bytes": made_bytes}}
    code, out, err = cli("sources", "inspect", "dataset1", "--out", str(settings.results_dir / "charts"))
    assert code == 0, err
    assert f"proxies s32: 3 of 3 good videos ({made_bytes / 1e6:.1f} MB), 0 stale" in out

    shutil.copy2(sorted((synthetic_sources / "dataset1" / "walking_dog").glob("*.mp4"))[0], folder / clips[0].name)  # new content
    os.utime(folder / clips[0].name, ns=(1, 1))
    sync_sources(settings, engine=engine, jobs=2)
    assert proxy_coverage(catalog.videos(["dataset1"]), catalog.proxies(["dataset1"]))["s32"]["stale"] == 1
    again = sync_sources(settings, engine=engine, jobs=2, proxies=32).proxies["dataset1"]
    assert (list(again.made), again.fresh) == ([f"cooking_x/{clips[0].name}"], 2)
    assert proxy_coverage(catalog.videos(["dataset1"]), catalog.proxies(["dataset1"]))["s32"]["fresh"] == 3
    code, out, err = cli("sources", "sync", "--proxies")  # no size: the default
    assert code == 0 and "proxies dataset1 (short side 256): made 3" in out, err
