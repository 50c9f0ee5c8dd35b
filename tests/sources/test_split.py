from __future__ import annotations

import csv
from collections import Counter

import pytest

from pytrain.errors import SplitError
from pytrain.sources import read_manifest, resolve_classes, split_clips, split_sizes, write_manifest


def counts(rows) -> dict[tuple[str, str], int]:
    return dict(Counter((r.split, r.label) for r in rows))


@pytest.mark.parametrize(
    ("n", "fractions", "expected"),
    [
        (10, (0.6, 0.2, 0.2), (6, 2, 2)),
        (16, (0.6, 0.2, 0.2), (10, 3, 3)),
        (3, (0.6, 0.2, 0.2), (1, 1, 1)),
        (5, (0.8, 0.2, 0.0), (4, 1, 0)),
        (1, (1.0, 0.0, 0.0), (1, 0, 0)),
    ],
)
def test_split_sizes(n, fractions, expected):
    assert split_sizes(n, *fractions) == expected


def test_split_is_stratified_per_class(tree):
    root = tree({"d": {"cooking_a": 6, "cooking_b": 4, "drinking": 5}})
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    rows = split_clips(resolved, train_fraction=0.6, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert counts(rows) == {
        ("train", "cooking"): 6, ("val", "cooking"): 2, ("test", "cooking"): 2,
        ("train", "drinking"): 3, ("val", "drinking"): 1, ("test", "drinking"): 1,
    }
    assert len({r.path for r in rows}) == 15  # every file exactly once


def test_split_is_deterministic_by_seed(tree):
    root = tree({"d": {"cooking_a": 20, "drinking": 20}})
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    kwargs = dict(train_fraction=0.6, val_fraction=0.2, test_fraction=0.2)
    first = split_clips(resolved, seed=7, **kwargs)
    assert split_clips(resolved, seed=7, **kwargs) == first
    assert split_clips(resolved, seed=8, **kwargs) != first


def test_class_with_too_few_clips_is_a_split_error(tree):
    root = tree({"d": {"cooking_a": 5, "drinking": 2}})
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    with pytest.raises(SplitError, match=r"class 'drinking' has 2 clip\(s\); a 0.6/0.2/0.2 split needs at least 3"):
        split_clips(resolved, train_fraction=0.6, val_fraction=0.2, test_fraction=0.2, seed=0)


def test_manifest_has_relative_paths_and_contract_columns(tree, tmp_path):
    root = tree({"d": {"cooking_a": 3, "drinking": 3}})
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    rows = split_clips(resolved, train_fraction=0.6, val_fraction=0.2, test_fraction=0.2, seed=0)
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    path = write_manifest(rows, task_dir)
    with open(path, newline="") as handle:
        lines = list(csv.reader(handle))
    assert lines[0] == ["path", "label", "split"]
    assert [line[2] for line in lines[1:]] == ["train", "train", "val", "val", "test", "test"]
    assert all(line[0].startswith("d/") and (root / line[0]).is_file() for line in lines[1:])
    assert read_manifest(task_dir) == rows
    assert sorted(p.name for p in task_dir.iterdir()) == ["manifest.csv"]  # videos are never copied


def test_manifest_interleaves_classes_inside_each_split(tree):
    # Training streams train rows in manifest order through a shuffle buffer: a class-sorted
    # manifest would feed single-class batches once a class outgrows the buffer.
    root = tree({"d": {"cooking_a": 30, "drinking": 30}})
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    rows = split_clips(resolved, train_fraction=0.6, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert [r.split for r in rows] == ["train"] * 36 + ["val"] * 12 + ["test"] * 12
    first_half = [r.label for r in rows[:18]]
    assert set(first_half) == {"cooking", "drinking"}
    changes = sum(a.label != b.label for a, b in zip(rows[:36], rows[1:36]))
    assert changes >= 10  # sorted by class would give exactly 1
