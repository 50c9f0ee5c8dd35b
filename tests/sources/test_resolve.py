from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytrain.errors import SourceError, SplitError
from pytrain.sources import class_of, resolve_classes
from pytrain.sources.resolve import NOT_UTF8


def labels(resolved) -> dict[str, int]:
    return resolved.counts()


def test_class_is_text_before_first_underscore():
    assert class_of("cooking_cuttingbread") == "cooking"
    assert class_of("cooking_peeling_potatoes") == "cooking"
    assert class_of("walking") == "walking"


def test_selected_class_merges_subclasses_across_datasets(tree):
    root = tree({
        "dataset1": {"cooking_bread": 3, "cooking_potatoes": 2, "drinking_water": 4},
        "dataset2": {"cooking_soup": 5, "drinking": 1},
    })
    resolved = resolve_classes(root, ["dataset1", "dataset2"], ["drinking", "cooking"])
    assert resolved.class_list == ["cooking", "drinking"]
    assert labels(resolved) == {"cooking": 10, "drinking": 5}
    assert resolved.folders == {
        "cooking": ["dataset1/cooking_bread", "dataset1/cooking_potatoes", "dataset2/cooking_soup"],
        "drinking": ["dataset1/drinking_water", "dataset2/drinking"],
    }
    assert resolved.clips[0].path == "dataset1/cooking_bread/clip_000.mp4"


def test_unselected_classes_are_ignored_without_include_other(tree):
    root = tree({"d": {"cooking_a": 3, "drinking_b": 3, "eating_c": 3, "walking": 3}})
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    assert labels(resolved) == {"cooking": 3, "drinking": 3}


def test_include_other_labels_unselected_classes_other(tree):
    root = tree({"d": {"cooking_a": 3, "drinking_b": 3, "eating_c": 2, "walking": 4}})
    resolved = resolve_classes(root, ["d"], ["drinking", "cooking"], include_other=True)
    assert resolved.class_list == ["Other", "cooking", "drinking"]  # sorted: stable label indices
    assert labels(resolved) == {"Other": 6, "cooking": 3, "drinking": 3}
    assert resolved.folders["Other"] == ["d/eating_c", "d/walking"]


def test_include_other_without_other_clips_is_an_error(tree):
    root = tree({"d": {"cooking_a": 3, "drinking_b": 3}})
    with pytest.raises(SourceError, match="include_other is set but"):
        resolve_classes(root, ["d"], ["cooking", "drinking"], include_other=True)


def test_unregistered_dataset_is_an_error_naming_sync(tree):
    root = tree({"d": {"cooking_a": 3}, "e": {"cooking_b": 3}})
    with pytest.raises(SourceError, match=r"\['e'\] are not registered") as info:
        resolve_classes(root, ["d", "e"], ["cooking"], registered=["d"])
    assert "pytrain sources sync" in info.value.hint


def test_unknown_dataset_is_an_error(tree):
    root = tree({"d": {"cooking_a": 3}})
    with pytest.raises(SourceError, match="dataset 'nope' has no folder"):
        resolve_classes(root, ["nope"], ["cooking"])


def test_selected_class_without_folder_is_an_error(tree):
    root = tree({"d": {"cooking_a": 3, "drinking_b": 3}})
    with pytest.raises(SourceError, match=r"class\(es\) \['sleeping'\] have no folder") as info:
        resolve_classes(root, ["d"], ["cooking", "sleeping"])
    assert "classes found: ['cooking', 'drinking']" in info.value.hint


def test_dataset_without_mp4_files_is_an_error(tree):
    root = tree({"d": {"cooking_a": 3}, "empty": {"cooking_b": 0}})
    (root / "empty" / "cooking_b" / "notes.txt").write_text("no videos here")
    with pytest.raises(SourceError, match="dataset 'empty' has no mp4 files"):
        resolve_classes(root, ["d", "empty"], ["cooking"])


def test_symlinked_dataset_outside_root_is_an_error(tree, tmp_path: Path):
    root = tree({"d": {"cooking_a": 3}})
    outside = tmp_path / "elsewhere"
    (outside / "cooking_x").mkdir(parents=True)
    (outside / "cooking_x" / "a.mp4").write_bytes(b"x")
    os.symlink(outside, root / "linked")
    with pytest.raises(SourceError, match="outside the sources root"):
        resolve_classes(root, ["linked"], ["cooking"])


def test_symlinked_class_folder_outside_root_is_an_error(tree, tmp_path: Path):
    root = tree({"d": {"cooking_a": 3}})
    outside = tmp_path / "elsewhere_drinking"
    outside.mkdir()
    (outside / "a.mp4").write_bytes(b"x")
    os.symlink(outside, root / "d" / "drinking_linked")
    with pytest.raises(SourceError, match="class folder .* outside the sources root"):
        resolve_classes(root, ["d"], ["cooking"])


def test_symlinked_video_outside_root_is_an_error(tree, tmp_path: Path):
    root = tree({"d": {"cooking_a": 3}})
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"x")
    os.symlink(secret, root / "d" / "cooking_a" / "escape.mp4")
    with pytest.raises(SourceError, match="video .*escape.mp4 resolves to .* outside the sources root"):
        resolve_classes(root, ["d"], ["cooking"])


def test_symlink_inside_root_is_allowed(tree):
    root = tree({"d": {"cooking_a": 3}, "shared": {"drinking_b": 3}})
    os.symlink(root / "shared" / "drinking_b", root / "d" / "drinking_linked")
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    assert labels(resolved) == {"cooking": 3, "drinking": 3}


def test_class_folder_with_no_videos_is_too_few_clips(tree):
    root = tree({"d": {"cooking_a": 3, "drinking_b": 0}})
    with pytest.raises(SourceError, match=r"\['drinking'\] have folders but no mp4 files"):
        resolve_classes(root, ["d"], ["cooking", "drinking"])


def test_hidden_folders_and_other_files_are_ignored(tree):
    root = tree({"d": {"cooking_a": 3, ".cache_x": 5, "drinking_b": 3}})
    (root / "d" / "cooking_a" / "readme.txt").write_text("x")
    (root / "d" / "cooking_a" / "UPPER.MP4").write_bytes(b"x")
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    assert labels(resolved) == {"cooking": 4, "drinking": 3}


def test_split_error_is_a_source_error():
    assert issubclass(SplitError, SourceError)


def test_a_file_or_folder_name_that_is_not_utf8_is_left_out_and_listed(tree):
    root = tree({"d": {"cooking_a": 3, "drinking_b": 2}})
    with open(os.path.join(os.fsencode(root / "d" / "cooking_a"), b"caf\xe9.mp4"), "wb") as clip:
        clip.write(b"x")
    os.mkdir(os.path.join(os.fsencode(root / "d"), b"drinking_caf\xe9"))
    with open(os.path.join(os.fsencode(root / "d"), b"drinking_caf\xe9", b"clip.mp4"), "wb") as clip:
        clip.write(b"x")
    resolved = resolve_classes(root, ["d"], ["cooking", "drinking"])
    assert labels(resolved) == {"cooking": 3, "drinking": 2}
    assert resolved.unlisted == {"d/cooking_a/caf\\xe9.mp4": NOT_UTF8, "d/drinking_caf\\xe9/": NOT_UTF8}
    assert all(clip.path.encode("utf-8") for clip in resolved.clips)


UNREADABLE = """
import sys
from pytrain.errors import SourceError
from pytrain.sources import resolve_classes
try:
    resolve_classes(sys.argv[1], ["d"], ["cooking", "drinking"])
except SourceError as exc:
    print(exc)
    sys.exit(3)
"""


def test_an_unreadable_class_folder_is_an_error_naming_its_path(tree):
    """Leaving it out would train and publish a model on part of its class unnoticed. As root, the
    resolving process runs without the capabilities that let root read any folder."""
    root = tree({"d": {"cooking_a": 2, "drinking_b": 2}})
    (root / "d" / "drinking_b").chmod(0)
    as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    try:
        proc = subprocess.run([*as_user, sys.executable, "-c", UNREADABLE, str(root)], capture_output=True, text=True, timeout=120)
    finally:
        (root / "d" / "drinking_b").chmod(0o755)
    assert (proc.returncode, proc.stdout.strip()) == (3, (
        f"cannot read class folder {root}/d/drinking_b: Permission denied (hint: make it readable by the user the "
        "orchestrator runs as (chmod/chown), then retry the task)")), proc.stderr
