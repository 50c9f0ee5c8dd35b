"""The video catalog's job manager: one method per database operation on table ``videos``.

The SQL lives in :mod:`pytrain.db.queries`; :mod:`pytrain.sources.catalog` walks the dataset
folders and probes the files.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytrain.db import queries
from pytrain.db.queue import Repository


class VideoCatalog(Repository):
    """The catalogued video files (table ``videos``), keyed by ``(dataset, path)``.

    Every method raises :class:`pytrain.errors.DatabaseError` when the database cannot be reached,
    and :class:`pytrain.errors.ConfigurationError` when it rejects a row (e.g. a dataset that is not
    registered).
    """

    subject = "the catalog row"

    def stamps(self, dataset: str) -> dict[str, tuple[int, int]]:
        """``{path: (size in bytes, mtime in ns)}`` of every catalogued file of ``dataset``."""
        rows = self._execute(queries.VIDEO_STAMPS, {"dataset": dataset})
        return {row["path"]: (row["size_bytes"], row["mtime_ns"]) for row in rows}

    def upsert(self, rows: list[dict[str, Any]]) -> None:
        """Insert or replace probe results, in one transaction.

        Args:
            rows: dicts with every column of :data:`pytrain.db.queries.UPSERT_VIDEO` (``dataset``,
                ``path``, ``size_bytes``, ``mtime_ns``, ``status``, ``reason`` and the metadata).
        """
        if rows:
            self._execute(queries.UPSERT_VIDEO, rows)

    def delete(self, dataset: str, paths: Iterable[str]) -> None:
        """Forget files of ``dataset`` that are gone."""
        paths = list(paths)
        if paths:
            self._execute(queries.DELETE_VIDEOS, {"dataset": dataset, "paths": paths})

    def videos(self, datasets: Iterable[str]) -> list[dict[str, Any]]:
        """Every catalogued file of ``datasets`` (all columns), sorted by dataset and path."""
        return self._execute(queries.LIST_VIDEOS, {"datasets": list(datasets)})

    def verdicts(self, datasets: Iterable[str]) -> list[dict[str, Any]]:
        """``dataset``, ``path``, ``size_bytes``, ``mtime_ns``, ``reason`` (``None``: ok) and
        ``content_hash`` of every catalogued file of ``datasets``: what
        :func:`pytrain.sources.catalog.seed_scan_results` and :func:`pytrain.sources.catalog.dataset_fingerprint` read."""
        return self._execute(queries.VIDEO_VERDICTS, {"datasets": list(datasets)})

    def record_proxies(self, rows: list[dict[str, Any]]) -> None:
        """Insert or replace proxy rows (``dataset``, ``path``, ``short_side``, ``source_hash``,
        ``gop``, ``fps``, ``size_bytes``: :func:`pytrain.sources.proxies.make_proxies`), in one transaction."""
        if rows:
            self._execute(queries.UPSERT_PROXY, rows)

    def proxies(self, datasets: Iterable[str]) -> list[dict[str, Any]]:
        """The proxy rows of ``datasets`` (``dataset``, ``path``, ``short_side``, ``source_hash``, ``size_bytes``)."""
        return self._execute(queries.LIST_PROXIES, {"datasets": list(datasets)})
