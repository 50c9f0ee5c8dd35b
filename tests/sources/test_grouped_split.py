"""The grouped split: clips of one recording never land in two splits."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from pytrain.errors import SplitError
from pytrain.sources import load_groups, resolve_classes, split_clips


def _recordings(root, layout: dict[str, dict[str, int]]) -> None:
    """``root/d/<folder>/<recording>__clip<k>.mp4``: ``layout[folder][recording]`` clips each."""
    for folder, recordings in layout.items():
        (root / "d" / folder).mkdir(parents=True, exist_ok=True)
        for recording, n in recordings.items():
            for k in range(n):
                (root / "d" / folder / f"{recording}__clip{k}.mp4").write_bytes(b"\x00")


def _split_of_each_group(rows, groups) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        found[groups[row.path]].add(row.split)
    return found


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_recording_appears_in_two_splits_and_every_class_gets_every_split(tmp_path, seed):
    root = tmp_path / "sources"
    # rec03 and rec04 hold clips of both classes: they must still land in one split each
    _recordings(root, {"cooking_a": {f"rec{r:02d}": 2 + r % 3 for r in range(8)},
                       "drinking_b": {f"rec{r:02d}": 1 + r % 2 for r in range(3, 12)}})
    (root / "d" / "group_separator").write_text("__\n")
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    groups = load_groups(root, ["d"], [c.path for c in resolved.clips])
    assert groups["d/cooking_a/rec03__clip1.mp4"] == groups["d/drinking_b/rec03__clip0.mp4"] == "d/rec03"
    rows = split_clips(resolved, train_fraction=0.6, val_fraction=0.2, test_fraction=0.2, seed=seed, groups=groups)
    assert {g: len(s) for g, s in _split_of_each_group(rows, groups).items()} == dict.fromkeys(set(groups.values()), 1)
    assert sorted(r.path for r in rows) == sorted(c.path for c in resolved.clips)
    per_class = Counter((r.label, r.split) for r in rows)
    assert all(per_class[(label, split)] >= 1 for label in ("cooking", "drinking") for split in ("train", "val", "test"))
    assert rows == split_clips(resolved, train_fraction=0.6, val_fraction=0.2, test_fraction=0.2, seed=seed, groups=groups)


def test_groups_csv_names_the_groups_and_unlisted_files_stand_alone(tmp_path):
    root = tmp_path / "sources"
    _recordings(root, {"cooking_a": {"x": 6}, "drinking_b": {"y": 6}})
    (root / "d" / "groups.csv").write_text("path,group\ncooking_a/x__clip0.mp4,cam1\ncooking_a/x__clip1.mp4,cam1\ndrinking_b/y__clip0.mp4,cam1\n")
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    groups = load_groups(root, ["d"], [c.path for c in resolved.clips])
    assert groups["d/cooking_a/x__clip0.mp4"] == groups["d/drinking_b/y__clip0.mp4"] == "d/cam1"
    assert groups["d/cooking_a/x__clip5.mp4"] == "d/cooking_a/x__clip5.mp4"
    rows = split_clips(resolved, train_fraction=0.6, val_fraction=0.2, test_fraction=0.2, seed=0, groups=groups)
    assert len({r.split for r in rows if groups[r.path] == "d/cam1"}) == 1


def test_a_class_from_too_few_recordings_is_refused_naming_it(tmp_path):
    root = tmp_path / "sources"
    _recordings(root, {"cooking_a": {"r1": 5, "r2": 5}, "drinking_b": {f"s{k}": 2 for k in range(5)}})
    (root / "d" / "group_separator").write_text("__")
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    groups = load_groups(root, ["d"], [c.path for c in resolved.clips])
    with pytest.raises(SplitError, match=r"class 'cooking' gets no clip in \w+: its clips come from 2 group\(s\)"):
        split_clips(resolved, train_fraction=0.6, val_fraction=0.2, test_fraction=0.2, seed=0, groups=groups)


def test_datasets_without_grouping_files_keep_the_plain_split(tmp_path):
    root = tmp_path / "sources"
    _recordings(root, {"cooking_a": {"r1": 5}, "drinking_b": {"s1": 5}})
    assert load_groups(root, ["d"], ["d/cooking_a/r1__clip0.mp4"]) is None
