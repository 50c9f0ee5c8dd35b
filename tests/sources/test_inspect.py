"""``pytrain sources inspect`` on a real synced dataset with bad files and a duplicate."""

from __future__ import annotations

import json
import os
import shutil

from fixtures.clips import make_bad_files, make_lavfi_clip
from orchestrator.test_cli import cli  # noqa: F401 -- the in-process CLI fixture


def test_inspect_lists_bad_files_duplicates_and_small_classes_and_writes_charts(cli, settings, engine, synthetic_sources, tmp_path):
    dataset = settings.sources_dir / "dataset1"
    for folder, n in (("cooking_cuttingbread", 3), ("cooking_peelingpotatoes", 3), ("drinking_water", 1)):
        (dataset / folder).mkdir(parents=True)
        for clip in sorted((synthetic_sources / "dataset1" / folder).glob("*.mp4"))[:n]:
            shutil.copy2(clip, dataset / folder / clip.name)
    shutil.copy2(dataset / "cooking_cuttingbread" / "clip_000.mp4", dataset / "drinking_water" / "copy.mp4")
    make_bad_files(dataset / "broken_x")
    avi = make_lavfi_clip(tmp_path / "cam.avi")
    (dataset / "broken_x" / "avi.mp4").write_bytes(avi.read_bytes()[: avi.stat().st_size * 2 // 5])
    code, out, err = cli("sources", "sync", "--jobs", "2")
    assert code == 0, err
    assert "catalog dataset1: probed 12 (4 bad), unchanged 0, forgotten 0" in out

    code, out, err = cli("sources", "inspect", "dataset1", "--json", "--out", str(tmp_path / "charts"))
    assert code == 0, err
    report = json.loads(out)
    assert (report["files"], report["good"]) == (12, 8)
    reasons = {bad["path"]: bad["reason"] for bad in report["bad"]}
    assert sorted(reasons) == ["broken_x/avi.mp4", "broken_x/empty.mp4", "broken_x/notes.mp4", "broken_x/truncated.mp4"]
    assert reasons["broken_x/empty.mp4"] == "the file is empty"
    assert reasons["broken_x/avi.mp4"].startswith("truncated: the container lists 23 frames, only ")
    assert all(reasons.values())
    assert report["duplicates"] == [["cooking_cuttingbread/clip_000.mp4", "drinking_water/copy.mp4"]]
    cooking = report["classes"]["cooking"]
    assert cooking["clips"] == 6 and list(cooking["subclasses"]) == ["cooking_cuttingbread", "cooking_peelingpotatoes"]
    assert cooking["resolutions"] == {"64x64": 6} and cooking["codecs"] == {"h264": 6}
    assert 0 < cooking["min_s"] <= cooking["median_s"] <= cooking["max_s"] and cooking["total_s"] >= 6 * cooking["min_s"]
    assert report["below_minimum"] == {"drinking": 2} and report["min_clips_per_class"] == 3

    from PIL import Image

    for png in report["charts"].values():
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 100

    code, text, _ = cli("sources", "inspect", "dataset1", "--out", str(tmp_path / "charts"))
    assert "bad broken_x/empty.mp4: the file is empty" in text
    assert "duplicates (same content): cooking_cuttingbread/clip_000.mp4, drinking_water/copy.mp4" in text
    assert "class drinking has 2 good clips; the split needs at least 3" in text


def test_inspect_of_an_unsynced_dataset_names_sync(cli, engine):
    code, _, err = cli("sources", "inspect", "nope")
    assert code == 1 and "the video catalog has no file of dataset 'nope'" in err and "pytrain sources sync" in err


def test_inspect_text_cuts_a_large_duplicate_group_and_json_keeps_it_whole(cli, settings, engine, tmp_path):
    from pytrain.sources.inspect import TEXT_LIST_LIMIT

    folder = settings.sources_dir / "dataset1" / "cooking_bread"
    clip = make_lavfi_clip(tmp_path / "clip.mp4")
    links = TEXT_LIST_LIMIT + 4
    folder.mkdir(parents=True)
    for i in range(links):  # a dataset of hard-linked files: one content, many paths
        os.link(clip, folder / f"clip_{i:03d}.mp4")
    code, _, err = cli("sources", "sync", "--jobs", "2")
    assert code == 0, err

    code, text, err = cli("sources", "inspect", "dataset1", "--out", str(tmp_path / "charts"))
    assert code == 0, err
    (line,) = [line for line in text.splitlines() if line.startswith("duplicates")]
    shown = ", ".join(f"cooking_bread/clip_{i:03d}.mp4" for i in range(TEXT_LIST_LIMIT))
    assert line == f"duplicates (same content): {shown}, ... and 4 more"

    code, out, err = cli("sources", "inspect", "dataset1", "--json", "--out", str(tmp_path / "charts"))
    assert code == 0, err
    assert json.loads(out)["duplicates"] == [[f"cooking_bread/clip_{i:03d}.mp4" for i in range(links)]]


def test_the_text_report_cuts_long_lists_of_bad_files_and_duplicate_groups():
    from pytrain.sources.inspect import TEXT_LIST_LIMIT, format_report

    n = TEXT_LIST_LIMIT + 3
    report = {"dataset": "d", "files": 3 * n, "good": 2 * n, "classes": {}, "below_minimum": {}, "min_clips_per_class": 3,
              "bad": [{"path": f"x_y/bad_{i:02d}.mp4", "reason": "the file is empty"} for i in range(n)],
              "duplicates": [[f"x_y/a_{i:02d}.mp4", f"x_z/a_{i:02d}.mp4"] for i in range(n)]}
    lines = format_report(report)
    assert lines[1:] == [
        *(f"bad x_y/bad_{i:02d}.mp4: the file is empty" for i in range(TEXT_LIST_LIMIT)), "... and 3 more bad files",
        *(f"duplicates (same content): x_y/a_{i:02d}.mp4, x_z/a_{i:02d}.mp4" for i in range(TEXT_LIST_LIMIT)),
        "... and 3 more duplicate groups",
    ]
