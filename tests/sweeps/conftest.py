"""Fixtures of the sweep tests."""

from __future__ import annotations

import pytest

from fixtures.processes import orchestrator_env
from pytrain.sources import sync_sources


@pytest.fixture
def sweep_settings(settings, engine, synthetic_sources, monkeypatch):
    """The test's settings on the test clips (registered), and ``PYTRAIN_*`` set for in-process CLI calls."""
    settings = settings.model_copy(update={"sources_dir": synthetic_sources, "lease_seconds": 10.0})
    sync_sources(settings, engine=engine, probe=False)
    for name, value in orchestrator_env(settings, "cli", lease_seconds=10.0, heartbeat_seconds=0.2, poll_seconds=0.2).items():
        if name.startswith("PYTRAIN_"):
            monkeypatch.setenv(name, value)
    from pytrain.settings import get_settings

    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()  # the next test's settings are its own
