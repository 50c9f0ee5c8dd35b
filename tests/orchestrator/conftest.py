"""Fixtures for the orchestrator tests (``tree`` and ``write_tree`` live in ``tests/fixtures/clips.py``)."""

from __future__ import annotations

import pytest
from fixtures.clips import write_tree


@pytest.fixture
def synced(settings, engine):
    """A sources root (``settings.sources_dir``) with LAYOUT, registered in the test database."""
    from orchestrator_fakes import LAYOUT
    from pytrain.sources import sync_sources

    write_tree(settings.sources_dir, LAYOUT)
    sync_sources(settings, engine=engine, probe=False)  # registration only: the files are placeholders
    return settings.sources_dir
