"""The shared decoded-clip cache: content-addressed, size-capped, least-recently-used, safe to share.

Every task on a host reads and fills one cache folder (``PYTRAIN_CLIP_CACHE_DIR``; the runners set
it from :class:`pytrain.settings.Settings`), so a second task on the same videos with the same clip
settings decodes nothing (docs/adr/0014-clip-cache-proxies-nvdec.md).

**Keys** (:func:`clip_key`) cover what the decoded pixels depend on: the file's content id (the
video catalog's content digest, which reaches training in ``manifest.csv``'s ``content`` column;
a file without one is keyed by its absolute path, size and mtime), which file was decoded (the
original or a training proxy), the decoder, the sampling mode and ``frame_interval``, and the
frames x height x width. Nothing else (not the task, its seed or learning rate).

**Entries** are files ``v1/entries/<k[:2]>/<key>.clip``: a header (magic, shape, one CRC-32 per
frame) and the ``(T, H, W, 3)`` uint8 frames. They are written to a temporary file in the same
folder, fsynced and moved in with ``os.replace``, so a reader sees a whole entry or none. Every read
checks the header, the file's size and the CRC of each frame it reads: a damaged entry is deleted
and decoded again (logged).

**Concurrency** (several DataLoader workers of several training processes): a clip being decoded
holds one of 256 lock stripes (``fcntl.flock`` on ``v1/locks/<k[:2]>.lock``; the kernel drops it
when a process dies), so two processes that need the same missing clip decode it once: the second
waits and reads the first's entry. Committing an entry and evicting take ``v1/cache.lock``.

**Size cap and LRU**: the bytes of the committed entries are counted in ``v1/used_bytes`` under
``v1/cache.lock``; a commit that would pass the cap first evicts the least recently used entries
down to 90 % of the cap (a scan of the folder, which also corrects the count). An entry's mtime is
its last use: a read sets it (at most once a minute per entry) — file access times are unreliable
(``noatime``/``relatime`` mounts). A reader that opened an entry before it was evicted still reads
it whole (POSIX unlink semantics).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Environment variables training reads (the runners set them from the settings of the same names).
CACHE_DIR_ENV = "PYTRAIN_CLIP_CACHE_DIR"
CACHE_GB_ENV = "PYTRAIN_CLIP_CACHE_GB"
#: The cap when ``PYTRAIN_CLIP_CACHE_GB`` is unset (the settings' default is this value).
DEFAULT_CACHE_GB = 50.0

_LAYOUT = "v1"
_MAGIC = b"PTCLIP01"
_HEADER = struct.Struct("<8sIIII")  # magic, frames, height, width, channels
_LOW_WATER = 0.9  # eviction frees down to this fraction of the cap, so scans are rare
_TOUCH_EVERY_S = 60.0
_STALE_TEMP_S = 3600.0


def clip_key(content: str, *, source: str, decoder: str, mode: str, frame_interval: int, frames: int, height: int, width: int) -> str:
    """The cache key (sha256 hex) of one decoded clip.

    Args:
        content: the video's content id (``catalog:<digest>``, or ``stamp:<path>:<size>:<mtime_ns>``).
        source: which file of that content is decoded: ``original`` or a proxy (``proxy-s256``).
        decoder: ``decord``, ``torchcodec``...: their scalers round differently.
        mode, frame_interval: the sampling (:class:`pytrain.sampling.ClipSampling`).
        frames, height, width: the decoded clip's size ``(T, H, W)``.
    """
    text = f"{_LAYOUT}|{content}|{source}|{decoder}|{mode}|{frame_interval}|{frames}x{height}x{width}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_bytes_from_env() -> int:
    """``PYTRAIN_CLIP_CACHE_GB`` (default :data:`DEFAULT_CACHE_GB`) in bytes (1 GB = 10^9 bytes).

    Raises:
        ValueError: the variable is not a positive number (the message names it).
    """
    text = os.environ.get(CACHE_GB_ENV, "").strip()
    try:
        gb = float(text) if text else DEFAULT_CACHE_GB
    except ValueError:
        gb = float("nan")
    if not gb > 0:
        raise ValueError(f"{CACHE_GB_ENV}={text!r} is not a positive number of gigabytes")
    return int(gb * 1e9)


class DamagedEntry(ValueError):
    """An entry whose header, size or checksums do not match (it is deleted and decoded again)."""


class ClipCache:
    """Decoded clips on disk under ``root``, shared by every process that opens the same folder.

    Args:
        root: the cache folder (made when missing).
        max_bytes: the size cap of the committed entries, bytes; ``None``: no cap.

    Attributes:
        decoded, hits, damaged: this process's counts (a DataLoader worker has its own).
    """

    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._base = self.root / _LAYOUT
        for folder in ("entries", "locks"):
            (self._base / folder).mkdir(parents=True, exist_ok=True)
        self.decoded = self.hits = self.damaged = 0

    # --- reading --------------------------------------------------------------------------

    def read(self, key: str, shape: tuple[int, int, int, int], decode: Callable[[], np.ndarray],
             indices: np.ndarray | None = None) -> np.ndarray:
        """The clip ``key`` (frames ``indices`` of it, default all), decoding it with ``decode()``
        and storing it when it is missing or damaged. While one process decodes a clip, another
        asking for the same one waits for it instead of decoding it too.

        Args:
            key: :func:`clip_key`.
            shape: the clip's ``(T, H, W, 3)``.
            decode: returns the whole clip, ``shape`` uint8.
            indices: frames wanted, each in ``[0, T)``.

        Returns:
            ``(len(indices) or T, H, W, 3)`` uint8.

        Raises:
            whatever ``decode`` raises (nothing is stored then); ValueError when ``decode``
            returns another shape.
        """
        found = self.get(key, shape, indices)
        if found is not None:
            return found
        with _flock(self._base / "locks" / f"{key[:2]}.lock"):
            found = self.get(key, shape, indices)  # filled by another process while we waited
            if found is not None:
                return found
            clip = np.ascontiguousarray(decode(), dtype=np.uint8)
            if clip.shape != tuple(shape):
                raise ValueError(f"decoded clip has shape {clip.shape}, expected {tuple(shape)}")
            self.decoded += 1
            self.put(key, clip)
        return clip if indices is None else clip[np.asarray(indices)]

    def get(self, key: str, shape: tuple[int, int, int, int], indices: np.ndarray | None = None) -> np.ndarray | None:
        """The stored clip ``key`` (frames ``indices``), verified; ``None`` when it is missing or
        was damaged (then it is deleted, and logged)."""
        file = self._file(key)
        try:
            clip = _read_entry(file, tuple(shape), indices)
        except FileNotFoundError:
            return None
        except (DamagedEntry, OSError) as exc:
            log.warning("clip cache: dropping damaged entry %s: %s", file, exc)
            self.damaged += 1
            self._drop(file)
            return None
        self.hits += 1
        self._touch(file)
        return clip

    # --- writing --------------------------------------------------------------------------

    def put(self, key: str, clip: np.ndarray) -> bool:
        """Store ``clip`` ((T, H, W, 3) uint8) as ``key`` atomically; returns whether it was stored
        (not when an entry is there already, or the clip alone is larger than the cap)."""
        file = self._file(key)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.parent / f".{file.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            size = _write_entry(tmp, clip)
            return self._commit(tmp, file, size)
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(self, tmp: Path, file: Path, size: int) -> bool:
        with _flock(self._base / "cache.lock"):
            if file.exists():
                return False
            used = self._used()
            if self.max_bytes is not None and used + size > self.max_bytes:
                used = self._evict(int(self.max_bytes * _LOW_WATER) - size)
                if used + size > self.max_bytes:
                    log.warning("clip cache: a %d-byte clip does not fit under the %d-byte cap: not cached", size, self.max_bytes)
                    return False
            os.replace(tmp, file)
            self._set_used(used + size)
        return True

    def _drop(self, file: Path) -> None:
        with _flock(self._base / "cache.lock"):
            try:
                file.unlink()
            except FileNotFoundError:
                return
            # a damaged entry's size says nothing about what was counted: count again (damage is rare)
            self._set_used(self.usage())

    # --- size and eviction (callers hold cache.lock) -------------------------------------------

    def usage(self) -> int:
        """Bytes of the committed entries now (a scan of the folder, not the counter)."""
        return sum(size for _, size, _ in self._scan())

    def _used(self) -> int:
        try:
            return int((self._base / "used_bytes").read_text())
        except (FileNotFoundError, ValueError):
            return self.usage()

    def _set_used(self, used: int) -> None:
        counter = self._base / "used_bytes"
        tmp = counter.with_name(f".used_bytes.{os.getpid()}.tmp")
        tmp.write_text(str(used))
        os.replace(tmp, counter)

    def _evict(self, target: int) -> int:
        """Delete the least recently used entries until at most ``target`` bytes are left; returns
        the bytes left (the true total: this scan also corrects the counter)."""
        entries = sorted(self._scan())  # oldest use first
        total = sum(size for _, size, _ in entries)
        evicted = 0
        for _, size, path in entries:
            if total <= target:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size
            evicted += 1
        if evicted:
            log.info("clip cache: evicted %d least recently used clips; %d bytes left (cap %s)", evicted, total, self.max_bytes)
        self._set_used(total)
        return total

    def _scan(self) -> Iterator[tuple[float, int, str]]:
        """``(last use, size, path)`` of every entry; removes temporary files left by crashed writers."""
        now = time.time()
        for shard in os.scandir(self._base / "entries"):
            if not shard.is_dir():
                continue
            for entry in os.scandir(shard.path):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name.endswith(".clip") and not entry.name.startswith("."):
                    yield st.st_mtime, st.st_size, entry.path
                elif entry.name.endswith(".tmp") and now - st.st_mtime > _STALE_TEMP_S:
                    Path(entry.path).unlink(missing_ok=True)

    def _file(self, key: str) -> Path:
        return self._base / "entries" / key[:2] / f"{key}.clip"

    @staticmethod
    def _touch(file: Path) -> None:
        try:
            if time.time() - file.stat().st_mtime > _TOUCH_EVERY_S:
                os.utime(file)
        except OSError:  # evicted meanwhile, or a read-only cache: the use is not recorded
            pass


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``path`` (made when missing) for the ``with`` block."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_entry(path: Path, clip: np.ndarray) -> int:
    """Write ``clip`` (T, H, W, 3) uint8 as an entry to ``path``, fsynced; returns its size in bytes."""
    clip = np.ascontiguousarray(clip, dtype=np.uint8)
    frames = clip.reshape(clip.shape[0], -1)
    crcs = np.array([zlib.crc32(frame) for frame in frames], dtype="<u4")
    with open(path, "wb") as handle:
        handle.write(_HEADER.pack(_MAGIC, *clip.shape))
        handle.write(crcs.tobytes())
        handle.write(frames.tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    return _HEADER.size + crcs.nbytes + frames.nbytes


def _read_entry(path: Path, shape: tuple[int, ...], indices: np.ndarray | None) -> np.ndarray:
    """Frames ``indices`` (default all) of the entry ``path``, each checked against its CRC.

    Raises:
        FileNotFoundError: no entry.
        DamagedEntry: another shape, a wrong size, a frame whose CRC does not match.
        OSError: it cannot be read.
    """
    with open(path, "rb") as handle:
        fd = handle.fileno()
        head = os.pread(fd, _HEADER.size, 0)
        if len(head) != _HEADER.size or head[:8] != _MAGIC:
            raise DamagedEntry("not a clip entry (header)")
        stored = _HEADER.unpack(head)[1:]
        if stored != shape:
            raise DamagedEntry(f"holds {stored}, expected {shape}")
        count, frame = shape[0], int(np.prod(shape[1:]))
        offset = _HEADER.size + 4 * count
        if os.fstat(fd).st_size != offset + count * frame:
            raise DamagedEntry(f"size {os.fstat(fd).st_size} bytes, expected {offset + count * frame}")
        crcs = np.frombuffer(os.pread(fd, 4 * count, _HEADER.size), dtype="<u4")
        wanted = np.arange(count) if indices is None else np.asarray(indices)
        out = np.empty((len(wanted), frame), dtype=np.uint8)
        for k, i in enumerate(wanted.tolist()):
            if not 0 <= i < count:
                raise IndexError(f"frame {i} of a {count}-frame clip")
            if os.preadv(fd, [out[k]], offset + i * frame) != frame or zlib.crc32(out[k]) != int(crcs[i]):
                raise DamagedEntry(f"frame {i} does not match its checksum")
    return out.reshape(len(wanted), *shape[1:])


__all__ = ["CACHE_DIR_ENV", "CACHE_GB_ENV", "ClipCache", "DEFAULT_CACHE_GB", "DamagedEntry", "cache_bytes_from_env", "clip_key"]
