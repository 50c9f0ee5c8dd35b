"""Runners: how a prepared task is trained, chosen by name (``PYTRAIN_RUNNER``).

``local`` (a subprocess, :mod:`pytrain.runners.local`), ``docker`` (one container per task,
:mod:`pytrain.runners.docker`) and ``slurm`` (one batch job per task, :mod:`pytrain.runners.slurm`) and ``ray`` (one Ray job per task,
:mod:`pytrain.runners.ray`) are
registered here; the contract they share is
:mod:`pytrain.runners.base`. A new runner is one call::

    register_runner("kubernetes", lambda settings: KubernetesRunner(settings))
"""

from __future__ import annotations

from collections.abc import Callable

from pytrain.errors import ConfigurationError
from pytrain.runners.base import (
    ClusterRunner, GpuSelection, Outcome, PreparedTask, Runner, RunResult, check_nodes, error_with_tail, parse_gpus,
)
from pytrain.runners.local import LocalRunner
from pytrain.settings import Settings, get_settings

RunnerFactory = Callable[[Settings], Runner]

#: Runner name (the value of ``PYTRAIN_RUNNER``) -> a factory building it from the settings.
RUNNERS: dict[str, RunnerFactory] = {}


def register_runner(name: str, factory: RunnerFactory) -> None:
    """Make ``PYTRAIN_RUNNER=<name>`` build its runner with ``factory(settings)``.

    Raises:
        ValueError: ``name`` is already registered (two runners cannot share a name).
    """
    if name in RUNNERS:
        raise ValueError(f"a runner named {name!r} is already registered")
    RUNNERS[name] = factory


def _docker_runner(settings: Settings) -> Runner:
    try:
        from pytrain.runners.docker import DockerRunner  # imported lazily: needs the docker SDK
    except ImportError as exc:
        raise ConfigurationError("the docker runner is not available", hint="pip install 'pytrain[docker]'") from exc
    return DockerRunner(settings)


def _slurm_runner(settings: Settings) -> Runner:
    from pytrain.runners.slurm import SlurmRunner  # imported lazily: only a Slurm login node needs it

    return SlurmRunner(settings)


def _ray_runner(settings: Settings) -> Runner:
    from pytrain.runners.ray import RayRunner  # imported lazily: imports Ray's client only when it submits

    return RayRunner(settings)


register_runner("local", LocalRunner)
register_runner("docker", _docker_runner)
register_runner("slurm", _slurm_runner)
register_runner("ray", _ray_runner)


def get_runner(settings: Settings | None = None) -> Runner:
    """The runner ``settings.runner`` names, built by its registered factory (see :data:`RUNNERS`).

    Raises:
        ConfigurationError: no runner has that name, or the runner's dependencies are missing
            (the docker runner without the Docker SDK) or its settings are invalid.
    """
    settings = settings or get_settings()
    factory = RUNNERS.get(settings.runner)
    if factory is None:
        known = ", ".join(sorted(RUNNERS))
        raise ConfigurationError(f"unknown runner {settings.runner!r}; known runners: {known}", hint=f"set PYTRAIN_RUNNER to one of: {known}")
    return factory(settings)


__all__ = [
    "RUNNERS", "ClusterRunner", "GpuSelection", "LocalRunner", "Outcome", "PreparedTask", "RunResult", "Runner", "RunnerFactory",
    "check_nodes", "error_with_tail", "get_runner", "parse_gpus", "register_runner",
]
