"""Runners: how a prepared task is trained. ``local`` (subprocess) here; ``docker`` in :mod:`pytrain.runners.docker`."""

from __future__ import annotations

from pytrain.errors import ConfigurationError
from pytrain.runners.base import Outcome, PreparedTask, Runner, RunResult
from pytrain.runners.local import LocalRunner
from pytrain.settings import Settings, get_settings


def get_runner(settings: Settings | None = None) -> Runner:
    """The runner ``settings.runner`` names: ``local`` -> :class:`LocalRunner`, ``docker`` -> ``DockerRunner``.

    Raises:
        ConfigurationError: an unknown runner, or the Docker runner's dependencies are missing.
    """
    settings = settings or get_settings()
    if settings.runner == "local":
        return LocalRunner(settings)
    if settings.runner == "docker":
        try:
            from pytrain.runners.docker import DockerRunner  # imported lazily: needs the docker SDK
        except ImportError as exc:
            raise ConfigurationError("the docker runner is not available", hint="pip install 'pytrain[docker]'") from exc
        return DockerRunner(settings)
    raise ConfigurationError(f"unknown runner {settings.runner!r}", hint="PYTRAIN_RUNNER=local or docker")


__all__ = ["LocalRunner", "Outcome", "PreparedTask", "RunResult", "Runner", "get_runner"]
