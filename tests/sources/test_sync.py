from __future__ import annotations

import pytest

from pytrain.db import SourceRegistry
from pytrain.errors import SourceError
from pytrain.sources import sync_sources


def test_sync_registers_dataset_folders_once(tree, settings, engine):
    root = tree({"dataset1": {"cooking_a": 1}, "dataset2": {"drinking": 1}, "bad name": {"x": 1}})
    (root / ".hidden").mkdir()
    (root / "file.txt").write_text("x")
    first = sync_sources(settings, engine=engine, sources_root=root, probe=False)
    assert first.added == ["dataset1", "dataset2"]
    assert first.registered == ["dataset1", "dataset2"]
    assert list(first.skipped) == ["bad name"]
    again = sync_sources(settings, engine=engine, sources_root=root, probe=False)
    assert again.added == []
    assert SourceRegistry(engine).names() == ["dataset1", "dataset2"]


def test_sync_reports_registered_datasets_missing_on_disk(tree, settings, engine):
    root = tree({"dataset1": {"cooking_a": 1}, "old": {"x": 1}})
    sync_sources(settings, engine=engine, sources_root=root, probe=False)
    (root / "old" / "x" / "clip_000.mp4").unlink()
    (root / "old" / "x").rmdir()
    (root / "old").rmdir()
    assert sync_sources(settings, engine=engine, sources_root=root, probe=False).missing == ["old"]


def test_sync_of_missing_root_is_an_error(settings, engine, tmp_path):
    with pytest.raises(SourceError, match="is not a folder"):
        sync_sources(settings, engine=engine, sources_root=tmp_path / "nope")
