"""Registering datasets: ``pytrain sources sync`` puts every dataset folder into table ``sources``.

A dataset is a folder directly under the sources root; its name is the source name (the database
checks ``folder = name``). Tasks may only use registered datasets.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from pytrain.task_columns import SOURCE_NAME_PATTERN
from pytrain.errors import ConfigurationError, SourceError, printable
from pytrain.settings import Settings, get_settings
from pytrain.sources.catalog import CatalogSync, Progress, sync_catalog
from pytrain.proxies import ProxyResult, make_proxies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    """What ``sync_sources`` did.

    Attributes:
        added: datasets registered now.
        registered: every registered dataset afterwards (sorted).
        missing: registered datasets whose folder is gone (kept: old tasks name them).
        skipped: ``{folder: reason}`` for folders that cannot be datasets.
        catalog: ``{dataset: CatalogSync}`` of the datasets whose video catalog was updated (empty
            when sync ran without probing).
        proxies: ``{dataset: ProxyResult}`` when proxies were asked for (:mod:`pytrain.proxies`).
    """

    added: list[str]
    registered: list[str]
    missing: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    catalog: dict[str, CatalogSync] = field(default_factory=dict)
    proxies: dict[str, ProxyResult] = field(default_factory=dict)


def discover_datasets(sources_root: Path) -> tuple[list[str], dict[str, str]]:
    """The dataset folders directly under ``sources_root``.

    Returns:
        ``(names, skipped)``: valid dataset names (sorted), and ``{name: reason}`` for folders that
        were left out (bad name, symlink leaving the sources root).

    Raises:
        SourceError: ``sources_root`` is not a folder.
    """
    root = Path(sources_root)
    if not root.is_dir():
        raise SourceError(f"the sources root {root} is not a folder", hint="set PYTRAIN_SOURCES_DIR")
    real_root = root.resolve()
    names: list[str] = []
    skipped: dict[str, str] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if not re.fullmatch(SOURCE_NAME_PATTERN, entry.name):  # match() lets "name\n" through
            skipped[printable(entry.name)] = f"the name must match {SOURCE_NAME_PATTERN}"  # maybe not UTF-8
        elif not entry.resolve().is_relative_to(real_root):
            skipped[entry.name] = f"it resolves to {entry.resolve()}, outside the sources root {real_root}"
        else:
            names.append(entry.name)
    for name, reason in skipped.items():
        log.warning("not registering dataset folder %r: %s", name, reason)
    return names, skipped


def sync_sources(settings: Settings | None = None, *, engine: Engine | None = None, sources_root: Path | None = None,
                 probe: bool = True, jobs: int | None = None, progress: Progress | None = None,
                 proxies: int | None = None) -> SyncResult:
    """Register every dataset folder of the sources root in table ``sources`` and update the video
    catalog (table ``videos``): only new and changed files are probed (:func:`sync_catalog`).

    Args:
        settings: PyTrain settings (default: the process settings); gives the sources root and,
            without ``engine``, the database.
        engine: the database to register into.
        sources_root: overrides ``settings.sources_dir``.
        probe: update the video catalog (False: only register the datasets).
        jobs: probe processes in parallel (default: the CPU count).
        progress: called after each probed file (:data:`pytrain.sources.catalog.Progress`).
        proxies: also make training proxies of this short side (pixels) for every catalogued video
            without a fresh one (:func:`pytrain.proxies.make_proxies`, ``jobs`` ffmpeg
            processes); ``None``: none.

    Returns:
        A :class:`SyncResult`.

    Raises:
        SourceError: the sources root is not a folder.
        DatabaseError: the database cannot be reached.
        ConfigurationError: files to probe and no decoder installed; proxies asked for without
            probing, with a bad size, or without ffmpeg.
        TrainingError: a probe child could not start.
    """
    from pytrain.db import SourceRegistry, VideoCatalog, get_engine

    settings = settings or get_settings()
    root = Path(sources_root or settings.sources_dir)
    names, skipped = discover_datasets(root)
    engine = engine or get_engine(settings)
    registry = SourceRegistry(engine)
    added = registry.register(names)
    registered = registry.names()
    missing = sorted(set(registered) - set(names))
    for name in added:
        log.info("registered dataset %s", name)
    catalog: dict[str, CatalogSync] = {}
    if proxies is not None and not probe:
        raise ConfigurationError("--proxies needs the video catalog: drop --no-probe", hint="pytrain sources sync --proxies")
    made: dict[str, ProxyResult] = {}
    if probe:
        videos = VideoCatalog(engine)
        for name in names:
            catalog[name] = sync_catalog(videos, root, name, jobs=jobs, progress=progress)
            if proxies is not None:
                made[name] = make_proxies(videos.videos([name]), root, proxies, jobs=jobs, record=videos.record_proxies)
    return SyncResult(added=added, registered=registered, missing=missing, skipped=skipped, catalog=catalog, proxies=made)
