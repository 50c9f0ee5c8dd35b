"""The video catalog on disk and in PostgreSQL: ``pytrain sources sync`` fills it incrementally.

A file is probed (decoded in a hang- and crash-proof child process, :func:`pytrain.training.probe.probe_videos`)
only when it is new or its (size, mtime) changed since its catalog row was written; rows of files
that are gone are deleted. The orchestrator hands the catalog's verdicts to a task folder as the
pre-scan's ``scan.json`` (:func:`seed_scan_results`), so training does not decode a known file
again, and needs no database access to benefit. See docs/adr/0008.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError, printable
from pytrain.sources.resolve import NOT_UTF8, VIDEO_SUFFIXES, is_utf8_name, unreadable_folder
from pytrain.spec import CATALOG_PREFIX, DatasetFingerprint, ManifestRow, ScanResult, read_scan, scan_stamp, write_scan

log = logging.getLogger(__name__)

#: Probe results written to the database per transaction: an interrupted sync keeps what it did.
_BATCH = 200
_METADATA = ("content_hash", "duration_s", "frame_count", "fps", "width", "height", "codec", "pixel_format")

#: ``progress(dataset, files probed so far, files to probe)``, called after each probed file.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CatalogSync:
    """What :func:`sync_catalog` did to one dataset's catalog.

    Attributes:
        dataset: the dataset (folder under the sources root).
        probed: paths (relative to the dataset folder) probed now: new or changed files.
        deleted: paths whose files are gone (their rows were deleted).
        unchanged: files whose (size, mtime) matched their row: not probed.
        bad: ``{path: reason}`` of the probed files that do not decode.
        skipped: ``{path: reason}`` of the files and class folders (``folder/``) left out: a name
            that is not UTF-8 (:data:`pytrain.sources.resolve.NOT_UTF8`; the path shown with
            :func:`pytrain.errors.printable`), a folder that cannot be read (its catalog rows are kept).
    """

    dataset: str
    probed: list[str]
    deleted: list[str]
    unchanged: int
    bad: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def list_video_files(dataset_dir: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """The dataset's video files, and what was left out.

    The layout :func:`pytrain.sources.resolve_classes` reads: ``<dataset>/<class folder>/*.mp4``,
    hidden folders left out.

    Returns:
        ``(files, skipped)``: ``{path relative to dataset_dir: (size in bytes, mtime in ns)}``, and
        ``{path: reason}`` of the files and folders (``folder/``) whose name is not UTF-8 or, for a
        class folder, that cannot be read (see :attr:`CatalogSync.skipped`).

    Raises:
        SourceError: the dataset folder itself cannot be read (its path named).
    """
    files: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    try:
        with os.scandir(dataset_dir) as found:
            folders = sorted((e for e in found if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)
    except OSError as exc:
        raise unreadable_folder(Path(dataset_dir), exc, "dataset folder") from exc
    for folder in folders:
        if not is_utf8_name(folder.name):
            skipped[printable(folder.name) + "/"] = NOT_UTF8
            continue
        try:
            with os.scandir(folder.path) as found:
                entries = [e for e in found if os.path.splitext(e.name)[1].lower() in VIDEO_SUFFIXES and e.is_file()]
        except OSError as exc:
            skipped[folder.name + "/"] = f"cannot read the folder: {exc.strerror or exc}"
            continue
        for entry in entries:
            path = f"{folder.name}/{entry.name}"
            if not is_utf8_name(entry.name):
                skipped[printable(path)] = NOT_UTF8
                continue
            st = entry.stat()
            files[path] = (st.st_size, st.st_mtime_ns)
    for path, reason in skipped.items():
        log.warning("dataset %s: leaving out %s: %s", Path(dataset_dir).name, path, reason)
    return files, skipped


def require_decoder() -> None:
    """Raises :class:`ConfigurationError` when no decoder is installed to probe videos with."""
    if importlib.util.find_spec("decord") is None:
        raise ConfigurationError(
            "cataloguing videos needs the decord decoder, which is not installed",
            hint="pip install 'pytrain[train]', or run `pytrain sources sync --no-probe` to only register the datasets",
        )


def sync_catalog(catalog, sources_root: Path, dataset: str, *, jobs: int | None = None, timeout: float | None = None,
                 progress: Progress | None = None) -> CatalogSync:
    """Bring one dataset's catalog rows up to date with its folder.

    Args:
        catalog: a :class:`pytrain.db.VideoCatalog`.
        sources_root: the folder that holds the dataset folder.
        dataset: a registered dataset.
        jobs: probe processes in parallel (default: the CPU count).
        timeout: seconds one file may take before its decoder is killed (default the pre-scan's).
        progress: called after each probed file (see :data:`Progress`).

    Returns:
        A :class:`CatalogSync`.

    Raises:
        ConfigurationError: no decoder is installed (:func:`require_decoder`).
        SourceError: the dataset folder cannot be read (:func:`list_video_files`).
        TrainingError: a probe child could not start.
        DatabaseError: the database cannot be reached.
    """
    from pytrain.training.probe import DEFAULT_TIMEOUT_S, probe_videos

    dataset_dir = Path(sources_root) / dataset
    on_disk, skipped = list_video_files(dataset_dir)
    known = catalog.stamps(dataset)
    todo = sorted(path for path, stamp in on_disk.items() if known.get(path) != stamp)
    unread = tuple(path for path in skipped if path.endswith("/"))  # a folder left out: its files are not gone
    gone = sorted(path for path in set(known) - set(on_disk) if not path.startswith(unread))
    catalog.delete(dataset, gone)
    if todo:
        require_decoder()
    pending: list[dict[str, Any]] = []
    bad: dict[str, str] = {}
    done = 0

    def record(i: int, info: dict[str, Any]) -> None:  # one call at a time (probe_videos holds a lock)
        nonlocal done
        path = todo[i]
        size, mtime_ns = on_disk[path]
        reason = info.get("reason")
        if reason is not None:
            bad[path] = reason
        pending.append({**{k: info.get(k) for k in _METADATA}, "dataset": dataset, "path": path, "size_bytes": size,
                        "mtime_ns": mtime_ns, "status": "ok" if reason is None else "bad", "reason": reason})
        if len(pending) >= _BATCH:
            catalog.upsert(pending)
            pending.clear()
        done += 1
        if progress is not None:
            progress(dataset, done, len(todo))

    log.info("dataset %s: probing %d of %d files, forgetting %d", dataset, len(todo), len(on_disk), len(gone))
    probe_videos([dataset_dir / path for path in todo], timeout=timeout or DEFAULT_TIMEOUT_S,
                 processes=jobs or os.cpu_count() or 1, on_result=record)
    catalog.upsert(pending)
    return CatalogSync(dataset=dataset, probed=todo, deleted=gone, unchanged=len(on_disk) - len(todo), bad=bad, skipped=skipped)


def seed_scan_results(task_dir: Path, rows: Iterable[ManifestRow], videos: Iterable[Mapping[str, Any]],
                      num_frames: int, height: int, width: int) -> int:
    """Give a task folder's pre-scan the catalog's verdicts: entries of ``scan.json`` for the
    manifest files it has no result for yet (a resumed task keeps its own).

    An entry holds under the catalog's (size, mtime): training probes a file again when it changed
    since the last ``pytrain sources sync``.

    Args:
        task_dir: the task folder (``scan.json`` is written there atomically).
        rows: the manifest (paths relative to the sources root, ``dataset/folder/file``).
        videos: catalog verdicts (:meth:`pytrain.db.VideoCatalog.verdicts`) of the task's datasets.
        num_frames, height, width: the task's clip size (frames, pixels), part of the stamp.

    Returns:
        How many entries were added.

    Raises:
        OSError: ``scan.json`` cannot be read or written.
    """
    by_path = {f"{v['dataset']}/{v['path']}": v for v in videos}
    results = read_scan(task_dir)
    added = 0
    for row in rows:
        video = by_path.get(row.path)
        if video is None or row.path in results:
            continue
        results[row.path] = ScanResult(scan_stamp(video["size_bytes"], video["mtime_ns"], num_frames, height, width), video["reason"])
        added += 1
    if added:
        write_scan(task_dir, results)
    return added


def dataset_fingerprint(rows: Iterable[ManifestRow], videos: Iterable[Mapping[str, Any]], sources_root: Path) -> DatasetFingerprint:
    """A digest of exactly the data a task trains, validates and tests on.

    It covers, for every row of the task's ``manifest.csv``: its split, its path relative to the
    sources root and its content — the video catalog's ``content_hash``
    (:func:`pytrain.training.probe.content_hash`) when the catalog row's (size, mtime) is the
    file's now, else the file's own ``size:mtime_ns`` (a file not catalogued, or changed since the
    last ``pytrain sources sync``; counted in :attr:`pytrain.spec.DatasetFingerprint.by_stamp`), or ``missing``.
    The lines ``split,path,content`` are sorted, joined with newlines and hashed with sha256. Not
    covered: the labels (the classes are params of their own), the order of the manifest, the
    files' names outside the sources root, and the clip size training decodes to.

    Args:
        rows: the manifest (:func:`pytrain.spec.read_manifest`), paths ``dataset/folder/file``.
        videos: catalog rows (:meth:`pytrain.db.VideoCatalog.verdicts`) of the task's datasets.
        sources_root: the folder the paths are relative to.
    """
    import hashlib

    by_path = {f"{v['dataset']}/{v['path']}": v for v in videos}
    lines, by_stamp = [], 0
    for row in rows:
        content = file_content_id(Path(sources_root) / row.path, by_path.get(row.path))
        by_stamp += not content.startswith(CATALOG_PREFIX)
        lines.append(f"{row.split},{row.path},{content}")
    lines.sort()
    return DatasetFingerprint(hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest(), len(lines), by_stamp)


def with_content_ids(rows: Iterable[ManifestRow], videos: Iterable[Mapping[str, Any]], sources_root: Path) -> list[ManifestRow]:
    """``rows`` with their ``content`` set to the catalog's id (``catalog:<content_hash>``) where
    the catalog row still describes the file (:func:`file_content_id`), else ``""``: the key of
    the shared clip cache and of training proxies, handed to training in ``manifest.csv``."""
    import dataclasses

    by_path = {f"{v['dataset']}/{v['path']}": v for v in videos}
    out = []
    for row in rows:
        content = file_content_id(Path(sources_root) / row.path, by_path.get(row.path))
        out.append(dataclasses.replace(row, content=content if content.startswith(CATALOG_PREFIX) else ""))
    return out


def file_content_id(path: Path, video: Mapping[str, Any] | None) -> str:
    """``catalog:<content_hash>`` while the catalog row still describes the file, else ``stamp:<size>:<mtime_ns>``
    (or ``missing``)."""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    if video is not None and video.get("content_hash") and (video["size_bytes"], video["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
        return f"{CATALOG_PREFIX}{video['content_hash']}"
    return f"stamp:{stat.st_size}:{stat.st_mtime_ns}"
