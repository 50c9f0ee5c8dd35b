"""``pytrain sources inspect DATASET``: what a dataset holds, from the video catalog.

Per class and subclass folder: clips, total/median/min/max duration (seconds), resolutions, frame
rates and codecs; the bad files with their reasons; exact duplicates (the same content hash in
two places: a split leak); classes below the split's minimum; and two PNG charts (class balance,
durations). The catalog is filled by ``pytrain sources sync`` (:mod:`pytrain.sources.catalog`).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytrain.errors import SourceError
from pytrain.sources.resolve import class_of


def _stats(videos: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Clip count and duration (seconds), resolution, fps and codec counts of good files."""
    durations = [v["duration_s"] for v in videos if v["duration_s"] is not None]
    return {
        "clips": len(videos),
        "total_s": round(sum(durations), 3),
        "median_s": round(statistics.median(durations), 3) if durations else None,
        "min_s": round(min(durations), 3) if durations else None,
        "max_s": round(max(durations), 3) if durations else None,
        "resolutions": dict(Counter(f"{v['width']}x{v['height']}" for v in videos if v["width"]).most_common()),
        "fps": dict(Counter(f"{v['fps']:g}" for v in videos if v["fps"]).most_common()),
        "codecs": dict(Counter(v["codec"] for v in videos if v["codec"]).most_common()),
    }


def inspect_dataset(dataset: str, videos: Iterable[Mapping[str, Any]], *, min_clips_per_class: int) -> dict[str, Any]:
    """The report of one dataset (JSON-ready).

    Args:
        dataset: its name.
        videos: its catalog rows (:meth:`pytrain.db.VideoCatalog.videos`).
        min_clips_per_class: the fewest good clips a class needs for the split
            (:func:`pytrain.sources.min_clips`).

    Returns:
        ``{"dataset", "files", "good", "classes": {class: stats + "subclasses": {folder: stats}},
        "bad": [{"path", "reason"}], "duplicates": [[path, ...]], "below_minimum": {class: clips},
        "min_clips_per_class"}``; stats are those of good files (see :func:`_stats`).

    Raises:
        SourceError: the catalog holds no file of ``dataset`` (not synced yet, or empty).
    """
    videos = list(videos)
    if not videos:
        raise SourceError(f"the video catalog has no file of dataset {dataset!r}",
                          hint="run `pytrain sources sync` (the dataset folder must hold <class>_<subclass>/*.mp4)")
    good = [v for v in videos if v["status"] == "ok"]
    by_folder: dict[str, list] = defaultdict(list)
    for v in good:
        by_folder[v["path"].split("/", 1)[0]].append(v)
    by_class: dict[str, list[str]] = defaultdict(list)
    for folder in sorted(by_folder):
        by_class[class_of(folder)].append(folder)
    classes = {
        cls: {**_stats([v for f in folders for v in by_folder[f]]), "subclasses": {f: _stats(by_folder[f]) for f in folders}}
        for cls, folders in sorted(by_class.items())
    }
    by_hash: dict[str, list[str]] = defaultdict(list)
    for v in videos:
        if v["content_hash"] and v["size_bytes"]:  # empty files are reported as bad, not as copies of each other
            by_hash[v["content_hash"]].append(v["path"])
    return {
        "dataset": dataset,
        "files": len(videos),
        "good": len(good),
        "classes": classes,
        "bad": [{"path": v["path"], "reason": v["reason"]} for v in videos if v["status"] != "ok"],
        "duplicates": sorted(sorted(paths) for paths in by_hash.values() if len(paths) > 1),
        "below_minimum": {cls: s["clips"] for cls, s in classes.items() if s["clips"] < min_clips_per_class},
        "min_clips_per_class": min_clips_per_class,
    }


def write_charts(report: Mapping[str, Any], videos: Iterable[Mapping[str, Any]], folder: Path) -> dict[str, str]:
    """Write ``class_balance.png`` (good clips per class) and ``durations.png`` (seconds) into ``folder``.

    Returns:
        ``{"class_balance": path, "durations": path}``.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (``pip install 'pytrain[train]'``).
        OSError: ``folder`` cannot be written.
    """
    from pytrain.training.plots import plot_class_balance, plot_durations

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = report["dataset"]
    counts = {cls: stats["clips"] for cls, stats in report["classes"].items()}
    durations = [v["duration_s"] for v in videos if v["status"] == "ok" and v["duration_s"] is not None]
    return {
        "class_balance": str(plot_class_balance(counts, folder / "class_balance.png", f"{name}: clips per class")),
        "durations": str(plot_durations(durations, folder / "durations.png", f"{name}: clip durations")),
    }


#: The most entries the text report shows of one list (the paths of one duplicate group, the
#: duplicate groups, the bad files): a dataset of thousands of hard-linked files would otherwise
#: print hundreds of kilobytes. The rest is one "... and N more"; ``--json`` keeps every entry.
TEXT_LIST_LIMIT = 10


def _capped(items: list[str], what: str = "") -> list[str]:
    """``items``, or the first :data:`TEXT_LIST_LIMIT` and ``"... and N more <what>"``."""
    if len(items) <= TEXT_LIST_LIMIT:
        return list(items)
    return [*items[:TEXT_LIST_LIMIT], f"... and {len(items) - TEXT_LIST_LIMIT} more {what}".rstrip()]


def format_report(report: Mapping[str, Any]) -> list[str]:
    """The report as text lines for the terminal; long lists are cut at :data:`TEXT_LIST_LIMIT`
    entries with ``... and N more`` (the report itself keeps them all)."""
    lines = [f"dataset {report['dataset']}: {report['files']} files, {report['good']} good"]

    def row(name: str, s: Mapping[str, Any], indent: str) -> str:
        spans = "-" if s["median_s"] is None else f"{s['total_s']:.1f} s total, median {s['median_s']:.2f} s ({s['min_s']:.2f}-{s['max_s']:.2f})"
        return (f"{indent}{name}: {s['clips']} clips, {spans}; " + "; ".join(
            f"{what} " + ", ".join(f"{k} x{n}" for k, n in s[what].items()) for what in ("resolutions", "fps", "codecs") if s[what]))

    for cls, stats in report["classes"].items():
        lines.append(row(cls, stats, "  "))
        lines += [row(folder, sub, "    ") for folder, sub in stats["subclasses"].items()]
    lines += _capped([f"bad {bad['path']}: {bad['reason']}" for bad in report["bad"]], "bad files")
    lines += _capped([f"duplicates (same content): {', '.join(_capped(paths))}" for paths in report["duplicates"]], "duplicate groups")
    for cls, clips in report["below_minimum"].items():
        lines.append(f"class {cls} has {clips} good clips; the split needs at least {report['min_clips_per_class']}")
    for size, cover in report.get("proxies", {}).items():
        lines.append(f"proxies {size}: {cover['fresh']} of {cover['videos']} good videos ({cover['bytes'] / 1e6:.1f} MB), "
                     f"{cover['stale']} stale (source changed: `pytrain sources sync --proxies --proxy-size {size[1:]}` remakes them)")
    if not report.get("proxies") and "proxies" in report:
        lines.append("proxies: none (make them with `pytrain sources sync --proxies`)")
    return lines
