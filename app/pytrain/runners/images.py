"""The training image: content-hash tag, build through the Docker SDK, NGC credentials.

The image tag is a hash of everything that goes into the image::

    pytrain-train:<first 16 hex digits of sha256 over>
        docker/train.Dockerfile, the build arguments (BASE_IMAGE, uid/gid),
        every file of app/pytrain/ (no caches), docker/requirements-train.txt,
        every wheel in docker/wheelhouse/

so a task whose image already exists starts without building, and any change to the code, the
pins or the base image gives a new tag. The build context is assembled from exactly those files
(a tar in memory, not the whole repository), which keeps it small and makes the hash honest.

NGC credentials: the API key is read from ``settings.ngc_api_key_file`` (``~/api.key``) only when
the base image is not on the host and must be pulled from ``nvcr.io``. It is used for a registry
login through the SDK (username ``$oauthtoken``) and is never written into a build argument, an
image layer, a container environment, a log line, an exception message or the database.

Bookkeeping (last tag, build time, build log) lives in ``app/docker_components/cache/``.

Example::

    from pytrain.runners.images import ensure_train_image
    result = ensure_train_image(docker.from_env(), get_settings())
    print(result.tag, result.built, result.seconds)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import tarfile
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Iterator, TextIO

from pytrain.errors import ConfigurationError, CredentialsError, RunnerError
from pytrain.settings import Settings, project_root

if TYPE_CHECKING:  # docker is an optional dependency (extra "docker")
    import docker

logger = logging.getLogger(__name__)

IMAGE_REPOSITORY = "pytrain-train"
TRAIN_DOCKERFILE = "docker/train.Dockerfile"
TRAIN_REQUIREMENTS = "docker/requirements-train.txt"
WHEELHOUSE = "docker/wheelhouse"
SOURCE_DIR = "app/pytrain"
NGC_REGISTRY = "nvcr.io"
NGC_USERNAME = "$oauthtoken"
NGC_KEY_URL = "https://org.ngc.nvidia.com/setup/api-key"
DEFAULT_UID = 1000
DEFAULT_GID = 1000

LABEL_COMPONENT = "org.pytrain.component"
LABEL_CONTENT_HASH = "org.pytrain.content-hash"
LABEL_BASE_IMAGE = "org.pytrain.base-image"

_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_HASH_LENGTH = 16


def cache_dir() -> Path:
    """``app/docker_components/cache/`` of the checkout (created when missing)."""
    path = project_root() / "app" / "docker_components" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class BuildInputs:
    """Everything that goes into the training image, snapshotted once.

    The files are hashed when the inputs are collected; small files (sources, Dockerfile,
    requirements) are also kept in memory, so the build context holds exactly the bytes that were
    hashed even while someone edits the checkout. Large files (wheels) are re-checked when the
    context is written.

    Attributes:
        context_dir: the repository root the relative paths start from.
        dockerfile: the Dockerfile, relative to ``context_dir``.
        buildargs: ``ARG`` values; never secrets.
        files: relative path -> sha256 (hex) of each file in the build context, sorted by path.
        snapshots: relative path -> bytes, for files up to 4 MiB.
    """

    context_dir: Path
    dockerfile: str
    buildargs: dict[str, str]
    files: dict[str, str]
    snapshots: dict[str, bytes] = field(default_factory=dict, repr=False)

    @cached_property
    def content_hash(self) -> str:
        """sha256 (hex) over the Dockerfile path, the build args and every file's path and digest."""
        digest = hashlib.sha256()
        digest.update(f"dockerfile\0{self.dockerfile}\0".encode())
        for key in sorted(self.buildargs):
            digest.update(f"arg\0{key}\0{self.buildargs[key]}\0".encode())
        for rel in sorted(self.files):
            digest.update(f"file\0{rel}\0{self.files[rel]}\0".encode())
        return digest.hexdigest()

    @property
    def tag(self) -> str:
        """``pytrain-train:<16 hex digits of the content hash>``."""
        return f"{IMAGE_REPOSITORY}:{self.content_hash[:_HASH_LENGTH]}"

    def context_tar(self) -> IO[bytes]:
        """An uncompressed tar of exactly :attr:`files` (owner root, mtime 0), rewound.

        Raises:
            RunnerError: a large file changed since it was hashed.
        """
        buffer = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for rel in sorted(self.files):
                path = self.context_dir / rel
                info = tarfile.TarInfo(rel)
                info.mode = 0o644
                info.mtime = 0
                data = self.snapshots.get(rel)
                if data is not None:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    continue
                info.size = path.stat().st_size
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
                if _file_digest(path) != self.files[rel]:
                    raise RunnerError(f"{path} changed while the build context was written", hint="run again")
        buffer.seek(0)
        return buffer


_SNAPSHOT_LIMIT = 4 * 1024 * 1024
_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so the 100 MB wheelhouse is read once."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    cached = _DIGESTS.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                digest.update(block)
        cached = _DIGESTS[key] = digest.hexdigest()
    return cached


def _walk(root: Path, rel: str) -> Iterator[str]:
    base = root / rel
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if name.endswith(_SKIP_SUFFIXES):
                continue
            yield str((Path(dirpath) / name).relative_to(root))


def build_inputs(
    base_image: str,
    *,
    context_dir: Path | None = None,
    uid: int = DEFAULT_UID,
    gid: int = DEFAULT_GID,
) -> BuildInputs:
    """Collect the training image's inputs.

    Args:
        base_image: ``BASE_IMAGE`` build argument (an NGC PyTorch image, or a local test image).
        context_dir: repository root; default :func:`pytrain.settings.project_root`.
        uid, gid: the image's non-root user.

    Raises:
        ConfigurationError: the Dockerfile, the requirements or the source folder is missing.
    """
    root = Path(context_dir) if context_dir is not None else project_root()
    if not base_image or any(ch.isspace() for ch in base_image):
        raise ConfigurationError(f"invalid base image {base_image!r}", hint="set PYTRAIN_BASE_IMAGE, e.g. nvcr.io/nvidia/pytorch:24.10-py3")
    for rel in (TRAIN_DOCKERFILE, TRAIN_REQUIREMENTS, SOURCE_DIR):
        if not (root / rel).exists():
            raise ConfigurationError(
                f"{root / rel} is missing; cannot build the training image",
                hint="run from a PyTrain checkout (the image is built from its docker/ and app/ folders)",
            )
    names = [TRAIN_DOCKERFILE, TRAIN_REQUIREMENTS, *_walk(root, SOURCE_DIR)]
    if (root / WHEELHOUSE).is_dir():
        names.extend(rel for rel in _walk(root, WHEELHOUSE) if rel.endswith(".whl"))
    files: dict[str, str] = {}
    snapshots: dict[str, bytes] = {}
    for rel in sorted(set(names)):
        path = root / rel
        try:
            if path.stat().st_size <= _SNAPSHOT_LIMIT:
                data = path.read_bytes()
                snapshots[rel] = data
                files[rel] = hashlib.sha256(data).hexdigest()
            else:
                files[rel] = _file_digest(path)
        except FileNotFoundError:  # deleted while we walked (an editor's temporary file)
            continue
    buildargs = {"BASE_IMAGE": base_image, "PYTRAIN_UID": str(uid), "PYTRAIN_GID": str(gid)}
    return BuildInputs(context_dir=root, dockerfile=TRAIN_DOCKERFILE, buildargs=buildargs, files=files, snapshots=snapshots)


@dataclass(frozen=True)
class ImageResult:
    """The training image a run uses.

    Attributes:
        tag: ``pytrain-train:<hash>``.
        built: ``True`` when this call built it, ``False`` when it already existed.
        seconds: time spent in :func:`ensure_train_image` (hashing, pull, build), in seconds.
        base_pulled: ``True`` when the base image had to be pulled.
    """

    tag: str
    built: bool
    seconds: float
    base_pulled: bool = False
    log_tail: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# NGC credentials


def read_api_key(path: Path) -> str:
    """Read the NGC API key from ``path``.

    Raises:
        CredentialsError: the file is missing, unreadable or empty (the message names the path
            and says how to get a key; it never contains the key).
    """
    path = Path(path).expanduser()
    if path.is_dir():  # docker-compose creates a directory where a bind-mounted file is missing
        raise CredentialsError(
            f"the NGC API key file {path} is a directory (was the key file missing on the host when the container started?)",
            hint=f"save the key from {NGC_KEY_URL} in the host file named by NGC_API_KEY_FILE in .env (default ~/api.key), then restart",
        )
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CredentialsError(
            f"the NGC API key file {path} does not exist, and the base image must be pulled from {NGC_REGISTRY}",
            hint=f"create an API key at {NGC_KEY_URL} (NGC > Setup > Generate API Key), save it alone in {path} "
            "(chmod 600), or set PYTRAIN_NGC_API_KEY_FILE to where it is",
        ) from None
    except OSError as exc:
        raise CredentialsError(
            f"cannot read the NGC API key file {path}: {exc.strerror}",
            hint=f"make {path} readable by this user, or set PYTRAIN_NGC_API_KEY_FILE",
        ) from None
    if not key:
        raise CredentialsError(
            f"the NGC API key file {path} is empty",
            hint=f"paste the key from {NGC_KEY_URL} into {path}",
        )
    return key


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _registry_of(image: str) -> str | None:
    """The registry host of an image reference, ``None`` for Docker Hub."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def ensure_base_image(client: "docker.DockerClient", base_image: str, key_file: Path) -> bool:
    """Make sure ``base_image`` is on the host; pull it (after an NGC login for nvcr.io) if not.

    Returns:
        ``True`` when it was pulled, ``False`` when it was already there.

    Raises:
        CredentialsError: nvcr.io needs the key and it is missing, empty or rejected.
        RunnerError: the pull failed for another reason (no network, unknown tag).
    """
    if _has_image(client, base_image):
        return False
    key = _ngc_login(client, key_file) if _registry_of(base_image) == NGC_REGISTRY else None
    logger.info("pulling base image %s", base_image)
    started = time.monotonic()
    _pull(client, base_image, key, key_file)
    logger.info("pulled %s in %.1f s", base_image, time.monotonic() - started)
    return True


# Errors are raised *outside* the except blocks: the SDK's exception may quote the request (with
# the key), and chaining (even suppressed, via __context__) would keep it reachable.
def _failure(exc: Exception, key: str | None) -> tuple[int | None, str]:
    """``(HTTP status, message with the key redacted)`` of a Docker API error."""
    return getattr(exc, "status_code", None), _redact(str(getattr(exc, "explanation", None) or exc), key)


def _has_image(client: "docker.DockerClient", image: str) -> bool:
    """Whether ``image`` is on the host.

    Raises:
        RunnerError: the engine cannot be asked.
    """
    import docker.errors

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.DockerException as exc:
        raise RunnerError(f"cannot inspect base image {image}: {exc}", hint="is the Docker engine running?") from exc


def _ngc_login(client: "docker.DockerClient", key_file: Path) -> str:
    """Log ``client`` in to nvcr.io with the NGC API key of ``key_file``; the key.

    Raises:
        CredentialsError: the key is missing, empty or rejected.
        RunnerError: the login failed for another reason.
    """
    import docker.errors

    key = read_api_key(key_file)
    failure: tuple[int | None, str] | None = None
    try:
        # Kept in the client's memory only (not in ~/.docker/config.json).
        client.login(username=NGC_USERNAME, password=key, registry=NGC_REGISTRY, reauth=True)
    except docker.errors.APIError as exc:
        failure = _failure(exc, key)
    if failure is not None:
        status, text = failure
        if status in (401, 403) or "unauthorized" in text.lower():
            raise CredentialsError(
                f"{NGC_REGISTRY} rejected the NGC API key from {Path(key_file).expanduser()}",
                hint=f"generate a new key at {NGC_KEY_URL} and replace the file's content (username is {NGC_USERNAME}, set by PyTrain)",
            )
        raise RunnerError(f"login to {NGC_REGISTRY} failed: {text}", hint="check the host's network access to nvcr.io")
    return key


def _pull(client: "docker.DockerClient", base_image: str, key: str | None, key_file: Path) -> None:
    """Pull ``base_image``, with the NGC ``key`` when it is one of nvcr.io's.

    Raises:
        CredentialsError: nvcr.io refused the image with the key.
        RunnerError: the pull failed for another reason (no network, unknown tag).
    """
    import docker.errors

    auth = {"username": NGC_USERNAME, "password": key} if key is not None else None
    failure: tuple[int | None, str] | None = None
    try:
        # The SDK splits "repo:tag" / "repo@sha256:..." itself and defaults to "latest".
        client.images.pull(base_image, auth_config=auth)
    except docker.errors.APIError as exc:
        failure = _failure(exc, key)
    if failure is None:
        return
    status, text = failure
    if key is not None and ("unauthorized" in text.lower() or status in (401, 403)):
        raise CredentialsError(
            f"{NGC_REGISTRY} refused to serve {base_image} with the NGC API key from {Path(key_file).expanduser()}",
            hint=f"check the key at {NGC_KEY_URL} and that your NGC account may pull this image",
        )
    raise RunnerError(
        f"cannot pull base image {base_image}: {text}",
        hint="check the image name and the network, or build/load the base image on this host first",
    )


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise builds between workers on one host (one worker per GPU set)."""
    with open(cache_dir() / "build.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def image_exists(client: "docker.DockerClient", tag: str) -> bool:
    """Whether ``tag`` is on the host."""
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_image(
    client: "docker.DockerClient",
    inputs: BuildInputs,
    tag: str,
    *,
    on_line: Callable[[str], None] | None = None,
    nocache: bool = False,
) -> list[str]:
    """Build ``inputs`` as ``tag`` through the SDK, streaming each output line.

    Each line goes to ``on_line`` when given, else to this module's logger (INFO); the whole log
    is written to ``app/docker_components/cache/last-build.log``.

    Returns:
        The last 40 lines of build output.

    Raises:
        RunnerError: the build failed; carries the failing step's output tail.
    """
    import docker.errors

    log_path = cache_dir() / "last-build.log"
    context = inputs.context_tar()
    error: str | None = None
    with open(log_path, "w", encoding="utf-8") as log:
        output = _BuildOutput(log, on_line)
        try:
            for chunk in _start_build(client, inputs, tag, context, nocache=nocache):
                chunk_error = output.add(chunk)
                if chunk_error is not None:
                    error = chunk_error
        except docker.errors.APIError as exc:
            error = getattr(exc, "explanation", None) or str(exc)
        finally:
            context.close()
    tail = "\n".join(output.tail)
    if error is not None:
        raise RunnerError(
            f"building the training image {tag} failed: {error}",
            hint=f"full build log in {log_path}; without network, run scripts/build_wheelhouse.sh first",
            stderr_tail=tail,
        )
    if not image_exists(client, tag):
        raise RunnerError(f"the build reported success but {tag} is not on the host", stderr_tail=tail)
    return list(output.tail)


def _start_build(client: "docker.DockerClient", inputs: BuildInputs, tag: str, context: IO[bytes], *, nocache: bool) -> Iterator[dict]:
    """The engine's build of ``inputs`` as ``tag`` from the tar ``context``: its decoded output chunks, labelled
    with the component, the content hash and the base image."""
    labels = {
        LABEL_COMPONENT: "train",
        LABEL_CONTENT_HASH: inputs.content_hash,
        LABEL_BASE_IMAGE: inputs.buildargs["BASE_IMAGE"],
    }
    return client.api.build(
        fileobj=context,
        custom_context=True,
        dockerfile=inputs.dockerfile,
        tag=tag,
        buildargs=inputs.buildargs,
        labels=labels,
        rm=True,
        forcerm=True,
        pull=False,
        nocache=nocache,
        decode=True,
    )


class _BuildOutput:
    """A build's output lines: written to the build log, kept as a 40-line tail, shown to ``on_line``
    (else logged at INFO)."""

    def __init__(self, log: TextIO, on_line: Callable[[str], None] | None) -> None:
        self.log = log
        self.on_line = on_line
        self.tail: deque[str] = deque(maxlen=40)

    def add(self, chunk: dict) -> str | None:
        """Take one decoded chunk of the engine's output; the error it reports, or ``None``."""
        text = chunk.get("stream") or chunk.get("status") or ""
        error = None
        if "error" in chunk:
            error = str(chunk.get("error", "")).strip()
            text = error
        for line in text.splitlines():
            line = line.rstrip()
            if not line:
                continue
            self.tail.append(line)
            self.log.write(line + "\n")
            self.log.flush()
            if self.on_line is not None:  # the caller shows it; keep the log quiet
                logger.debug("build: %s", line)
                self.on_line(line)
            else:
                logger.info("build: %s", line)
        return error


def _record(result: ImageResult, inputs: BuildInputs) -> None:
    from pytrain.spec import write_json_atomic

    try:
        write_json_atomic(
            cache_dir() / "train-image.json",
            {
                "tag": result.tag,
                "content_hash": inputs.content_hash,
                "base_image": inputs.buildargs["BASE_IMAGE"],
                "built": result.built,
                "seconds": round(result.seconds, 3),
                "base_pulled": result.base_pulled,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": len(inputs.files),
            },
        )
    except OSError as exc:  # bookkeeping must never fail a run
        logger.warning("cannot write image bookkeeping into %s: %s", cache_dir(), exc)


def ensure_train_image(
    client: "docker.DockerClient",
    settings: Settings,
    *,
    base_image: str | None = None,
    context_dir: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    force: bool = False,
) -> ImageResult:
    """Return the training image's tag, building it only when no image has that content hash.

    Args:
        client: a Docker client.
        settings: PyTrain settings (``base_image``, ``ngc_api_key_file``).
        base_image: overrides ``settings.base_image``.
        context_dir: repository root; default :func:`pytrain.settings.project_root`.
        on_line: called with each line of build output.
        force: rebuild even when the tag exists (the layer cache still applies).

    Raises:
        ConfigurationError: the build inputs are missing.
        CredentialsError: the base image must be pulled from nvcr.io and the key is missing/rejected.
        RunnerError: the pull or the build failed.
    """
    started = time.monotonic()
    base = base_image or settings.base_image
    inputs = build_inputs(base, context_dir=context_dir)
    tag = inputs.tag
    if not force and image_exists(client, tag):
        result = ImageResult(tag=tag, built=False, seconds=time.monotonic() - started)
        logger.info("training image %s exists; no build (%.2f s)", tag, result.seconds)
        _record(result, inputs)
        return result
    with _build_lock():
        if not force and image_exists(client, tag):  # another worker built it while we waited
            result = ImageResult(tag=tag, built=False, seconds=time.monotonic() - started)
            _record(result, inputs)
            return result
        pulled = ensure_base_image(client, base, settings.ngc_api_key_file)
        logger.info("building training image %s from %s (%d files in the context)", tag, base, len(inputs.files))
        tail = build_image(client, inputs, tag, on_line=on_line)
    result = ImageResult(tag=tag, built=True, seconds=time.monotonic() - started, base_pulled=pulled, log_tail=tail)
    logger.info("built training image %s in %.1f s", tag, result.seconds)
    _record(result, inputs)
    return result


def docker_client(timeout: float = 120.0) -> "docker.DockerClient":
    """A client for the engine in ``DOCKER_HOST`` (default the local socket).

    Raises:
        RunnerError: the docker SDK is not installed or no engine answers.
    """
    try:
        import docker
    except ModuleNotFoundError as exc:
        raise RunnerError("the docker runner needs the Docker SDK", hint="pip install 'pytrain[docker]'") from exc
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        raise RunnerError(
            f"no Docker engine answers at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}: {exc}",
            hint="start it (as root: scripts/start_dockerd.sh), or mount /var/run/docker.sock into the orchestrator container",
        ) from exc
    return client


__all__ = [
    "BuildInputs",
    "ImageResult",
    "build_inputs",
    "build_image",
    "cache_dir",
    "docker_client",
    "ensure_base_image",
    "ensure_train_image",
    "image_exists",
    "read_api_key",
]

