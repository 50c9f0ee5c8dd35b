"""Training proxies: each catalogued video transcoded once into a small H.264 file that decodes fast.

This module imports nothing heavy (no database, no torch): training on a bare GPU host picks proxies
with it, ``pytrain sources sync`` makes them.

``pytrain sources sync --proxies [--proxy-size SIZE]`` makes them (:func:`make_proxies`): ffmpeg scales the video
so its short side is ``SIZE`` pixels (default 256; a smaller video keeps its size), at a constant
frame rate (the source's average), with a keyframe every :data:`PROXY_GOP` frames (a sampled frame
is reachable by decoding at most that many) and without audio. ``--jobs`` ffmpeg processes run at
once.

A proxy is addressed by its source's content digest (the video catalog's ``content_hash``):
``<sources root>/.proxies/s<SIZE>/<hash[:2]>/<hash>.mp4`` (:func:`proxy_path`). So training, which
has no database, finds a fresh proxy from the digest ``manifest.csv`` carries (:func:`pick_proxy`),
and a changed source, whose digest changed, has no proxy until the next sync makes one: a stale
proxy is never read. The catalog records each proxy (table ``video_proxies``: source digest,
parameters, size) for ``pytrain sources inspect``'s coverage (:func:`proxy_coverage`). The folder
starts with a dot, so it is never registered as a dataset, and it travels with the sources root
(containers and Slurm jobs see it where they see the videos).

A task's clip fits in a proxy when its height and width are at most the proxy's short side; training
then reads the smallest proxy that fits, and logs how many clips came from proxies.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError
from pytrain.spec import CATALOG_PREFIX

log = logging.getLogger(__name__)

#: The proxies' folder under the sources root (a dot folder: never a dataset).
PROXY_DIR = ".proxies"
#: The default short side of a proxy, pixels.
DEFAULT_PROXY_SIZE = 256
#: Frames between two keyframes of a proxy (``-g``): a sampled frame costs at most this many decodes.
PROXY_GOP = 8
#: x264 settings: visually lossless at training sizes (CRF 20), fast to make, and fast to decode
#: (``-tune fastdecode``: no CABAC, no deblocking filter; larger files, cheaper frames).
_X264 = ("-c:v", "libx264", "-preset", "veryfast", "-tune", "fastdecode", "-crf", "20", "-pix_fmt", "yuv420p")
#: Seconds one transcode may take before ffmpeg is killed.
TRANSCODE_TIMEOUT_S = 3600.0


def proxy_source(size: int) -> str:
    """The clip cache's name for a proxy of short side ``size`` (``proxy-s256``)."""
    return f"proxy-s{size}"


def proxy_path(sources_root: Path, content_hash: str, size: int) -> Path:
    """Where the proxy of the video with ``content_hash`` and short side ``size`` lives."""
    return Path(sources_root) / PROXY_DIR / f"s{size}" / content_hash[:2] / f"{content_hash}.mp4"


def proxy_sizes(sources_root: Path) -> list[int]:
    """The proxy sizes present under ``sources_root`` (folders ``.proxies/s<N>``), ascending."""
    folder = Path(sources_root) / PROXY_DIR
    if not folder.is_dir():
        return []
    return sorted(int(entry.name[1:]) for entry in folder.iterdir() if entry.is_dir() and entry.name[:1] == "s" and entry.name[1:].isdigit())


def pick_proxy(sources_root: Path, content: str, height: int, width: int, sizes: list[int]) -> tuple[Path, int] | None:
    """The smallest fresh proxy a ``height x width`` clip of the video ``content`` fits in, as
    ``(path, size)``; ``None`` when there is none (no catalog digest, no proxy that large).

    Args:
        sources_root: the sources root.
        content: the manifest's content id (``catalog:<hash>``; anything else has no proxy).
        height, width: the task's clip size, pixels.
        sizes: :func:`proxy_sizes` of the root (listed once per task, not per clip).
    """
    if not content.startswith(CATALOG_PREFIX):
        return None
    digest = content[len(CATALOG_PREFIX):]
    for size in sizes:
        if size >= max(height, width):
            path = proxy_path(sources_root, digest, size)
            if path.is_file():
                return path, size
    return None


@dataclass(frozen=True)
class ProxyResult:
    """What :func:`make_proxies` did for one dataset.

    Attributes:
        made: ``{path: proxy bytes}`` of the proxies made now (paths relative to the dataset).
        fresh: proxies that were already there for the file's current content.
        failed: ``{path: reason}`` of the transcodes that failed.
        source_bytes, proxy_bytes: the sizes of the sources and proxies made now, bytes.
        seconds: the video duration of the sources made now, seconds (the catalog's).
    """

    made: dict[str, int] = field(default_factory=dict)
    fresh: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    source_bytes: int = 0
    proxy_bytes: int = 0
    seconds: float = 0.0


def make_proxies(videos: Iterable[Mapping[str, Any]], sources_root: Path, size: int = DEFAULT_PROXY_SIZE, *, jobs: int | None = None,
                 record: Callable[[list[dict[str, Any]]], None] | None = None) -> ProxyResult:
    """Transcode every good catalogued video of ``videos`` that has no fresh proxy of ``size``.

    Args:
        videos: catalog rows (:meth:`pytrain.db.VideoCatalog.videos`) of one dataset.
        sources_root: the sources root (the videos are ``<root>/<dataset>/<path>``).
        size: the proxies' short side, pixels (>= 16).
        jobs: ffmpeg processes at once (default: the CPU count).
        record: called with the catalog rows of the proxies made (``pytrain.db.VideoCatalog.record_proxies``).

    Returns:
        A :class:`ProxyResult`.

    Raises:
        ConfigurationError: ``size`` is out of range, or ffmpeg is not installed.
    """
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise ConfigurationError(f"proxy size {size!r} is out of range", hint="use a short side in pixels from 16 to 4096, e.g. 256")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ConfigurationError("making proxies needs the ffmpeg program, which is not installed", hint="apt-get install ffmpeg")
    todo = [v for v in videos if v.get("status") == "ok" and v.get("content_hash")]
    fresh = sum(proxy_path(sources_root, v["content_hash"], size).is_file() for v in todo)
    todo = [v for v in todo if not proxy_path(sources_root, v["content_hash"], size).is_file()]
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:  # threads wait on ffmpeg processes
        outcomes = list(pool.map(lambda video: _transcode(ffmpeg, video, sources_root, size), todo))
    made = {v["path"]: n for v, (n, error) in zip(todo, outcomes) if error is None}
    failed = {v["path"]: error for v, (_, error) in zip(todo, outcomes) if error is not None}
    for path, error in failed.items():
        log.warning("no proxy of %s: %s", path, error)
    done = [v for v in todo if v["path"] in made]
    if record is not None and done:
        record([{"dataset": v["dataset"], "path": v["path"], "short_side": size, "source_hash": v["content_hash"], "gop": PROXY_GOP,
                 "fps": v.get("fps"), "size_bytes": made[v["path"]]} for v in done])
    return ProxyResult(made=made, fresh=fresh, failed=failed, source_bytes=sum(v["size_bytes"] for v in done),
                       proxy_bytes=sum(made.values()), seconds=sum(v.get("duration_s") or 0.0 for v in done))


def _transcode(ffmpeg: str, video: Mapping[str, Any], sources_root: Path, size: int) -> tuple[int, str | None]:
    """Make one proxy (temporary file, then ``os.replace``); ``(bytes, None)`` or ``(0, reason)``."""
    source = Path(sources_root) / video["dataset"] / video["path"]
    target = proxy_path(sources_root, video["content_hash"], size)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.{os.urandom(4).hex()}.mp4")
    command = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-map", "0:v:0", "-an", "-sn", "-dn",
               "-vf", _scale_filter(video.get("width"), video.get("height"), size), *_rate_options(video.get("fps")),
               *_X264, "-g", str(PROXY_GOP), "-keyint_min", str(PROXY_GOP), "-sc_threshold", "0", "-movflags", "+faststart", str(tmp)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TRANSCODE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return 0, f"ffmpeg exited {done.returncode}: {lines[-1] if lines else 'no message'}"
        os.replace(tmp, target)
        return target.stat().st_size, None
    except subprocess.TimeoutExpired:
        return 0, f"ffmpeg took over {TRANSCODE_TIMEOUT_S:g} s"
    finally:
        tmp.unlink(missing_ok=True)


def _scale_filter(width: int | None, height: int | None, size: int) -> str:
    """ffmpeg's ``scale`` to a short side of ``size`` (never larger than the source), even sizes."""
    if width and height and min(width, height) <= size:
        return "scale=trunc(iw/2)*2:trunc(ih/2)*2"
    return f"scale=-2:{size}" if (width or 1) >= (height or 0) else f"scale={size}:-2"


def _rate_options(fps: float | None) -> list[str]:
    """A constant frame rate: the source's average (the catalog's), so frame indices keep their time."""
    return ["-fps_mode", "cfr", "-r", f"{fps:.6g}"] if fps else ["-fps_mode", "cfr"]


def proxy_coverage(videos: Iterable[Mapping[str, Any]], proxies: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per proxy size: how many good videos have a fresh proxy, how many a stale one (made from
    content the file no longer has), and the fresh proxies' bytes.

    Args:
        videos: catalog rows of a dataset (``path``, ``status``, ``content_hash``).
        proxies: its ``video_proxies`` rows (``path``, ``short_side``, ``source_hash``, ``size_bytes``).

    Returns:
        ``{"s256": {"videos": n_ok, "fresh": .., "stale": .., "bytes": ..}, ...}``.
    """
    current = {v["path"]: v.get("content_hash") for v in videos if v.get("status") == "ok"}
    coverage: dict[str, dict[str, int]] = {}
    for proxy in proxies:
        entry = coverage.setdefault(f"s{proxy['short_side']}", {"videos": len(current), "fresh": 0, "stale": 0, "bytes": 0})
        if proxy["path"] not in current:
            continue
        if proxy["source_hash"] == current[proxy["path"]]:
            entry["fresh"] += 1
            entry["bytes"] += int(proxy["size_bytes"])
        else:
            entry["stale"] += 1
    return coverage


__all__ = [
    "DEFAULT_PROXY_SIZE", "PROXY_DIR", "PROXY_GOP", "ProxyResult", "make_proxies", "pick_proxy", "proxy_coverage", "proxy_path",
    "proxy_sizes", "proxy_source",
]
