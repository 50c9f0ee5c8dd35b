"""The ``docker`` runner: one training container per task, driven through the Docker SDK.

For each task it

1. makes sure the training image exists (:func:`pytrain.runners.images.ensure_train_image`:
   content-hash tag, built only when missing);
2. removes a container a lost run of the task left on this engine (:meth:`DockerRunner.reap_lost_runs`),
   then creates a container labelled with the task id (``org.pytrain.task-id``) that runs
   ``python -m pytrain.training --task-dir /task --sources-root /sources`` (``torchrun`` when the
   task has several GPUs), with

   - GPUs through device requests (``PreparedTask.gpus`` or ``settings.gpus``: ``"0,1"``/``"all"``),
   - NVIDIA's recommended limits for PyTorch containers: ``--shm-size`` (``settings.shm_size``),
     ``--ulimit memlock=-1 --ulimit stack=67108864``,
   - a memory limit without swap (``settings.container_memory``) and a pids limit,
   - no network, a read-only root file system and a tmpfs ``/tmp``,
   - every Linux capability dropped and ``no-new-privileges`` (no setuid way back to root),
   - the dataset mounted read-only at ``/sources``; writable: only the task folder at ``/task`` and the
     host's shared clip cache (``PYTRAIN_CLIP_CACHE_DIR``) at ``/clip-cache``;
   - the pretrained weights folder (``PYTRAIN_TORCH_HOME``) read-only at ``/opt/torch-home`` as
     ``TORCH_HOME`` (training never downloads; ``pytrain weights fetch`` fills it);
   - the image's non-root user (uid 1000; as root the runner hands the task folder to it), or,
     when the runner itself is not root, this process's uid:gid so the files stay the user's;
   - tini as PID 1 (``init``), so ``docker stop`` reaches python at once;

3. streams the container's output into the task folder's ``train.log``;
4. waits for the end, the task's timeout, ``cancel`` or ``stop`` and maps the exit to an
   :class:`~pytrain.runners.base.Outcome` (:func:`~pytrain.runners.base.supervise`, shared with
   the local runner): 0 -> succeeded; ``OOMKilled`` -> out of memory (with the limit); anything
   else -> failed with the tail of stderr;
5. removes the container in every case (also when this process is interrupted).

The Docker socket is root on the host: whoever can write to it can start a privileged container.
The runner refuses to start when the socket is world-writable (:func:`check_docker_socket`); the
docs/operations/security.md lists what a site can do about the rest.

When the orchestrator itself runs in a container (docker-compose), bind-mount sources must be
*host* paths: the runner reads its own container's bind mounts from the engine and translates
(``/app/model_tasks/task-1-m`` -> ``<checkout>/model_tasks/task-1-m``);
``PYTRAIN_HOST_SOURCES_DIR`` / ``PYTRAIN_HOST_MODEL_TASKS_DIR`` override that.

Example::

    runner = DockerRunner(get_settings())
    result = runner.run(prepared_task, cancel=threading.Event())
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pytrain.errors import ConfigurationError, RunnerError
from pytrain.runners.base import GpuSelection, Outcome, PreparedTask, RunResult, run_result, supervise, torchrun_args
from pytrain.runners.base import parse_gpus as parse_gpu_selection
from pytrain.runners.base import check_no_secrets, clip_cache_environment
from pytrain.runners.images import docker_client, ensure_train_image
from pytrain.settings import Settings
from pytrain.spec import MANIFEST, TASK_SPEC
from pytrain.training.clip_cache import CACHE_DIR_ENV
from pytrain.video import DECODER_ENV

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

logger = logging.getLogger(__name__)

LABEL_MANAGED = "org.pytrain.managed"
LABEL_TASK_ID = "org.pytrain.task-id"
LABEL_MODEL = "org.pytrain.model-name"
LABEL_WORKER = "org.pytrain.worker"

CONTAINER_TASK_DIR = "/task"
CONTAINER_SOURCES_DIR = "/sources"
CONTAINER_TORCH_HOME = "/opt/torch-home"
#: Where a training container sees the host's shared clip cache (``PYTRAIN_CLIP_CACHE_DIR``), read-write.
CONTAINER_CLIP_CACHE = "/clip-cache"
STACK_BYTES = 67108864  # 64 MiB, as NVIDIA recommends for PyTorch containers
STDERR_TAIL_LINES = 30
_SIZE = re.compile(r"^\d+(\.\d+)?\s*[bkmgBKMG]?$")
_POLL_SECONDS = 0.25
_STOPPED_SECONDS = 30  # how long to wait for the engine to report a stopped container as not running
DEFAULT_DOCKER_SOCKET = Path("/var/run/docker.sock")


def docker_socket_path() -> Path | None:
    """The engine's Unix socket: ``DOCKER_HOST`` (``unix://PATH``), else ``/var/run/docker.sock``;
    ``None`` when ``DOCKER_HOST`` names a TCP or SSH endpoint (no file to check)."""
    host = os.environ.get("DOCKER_HOST", "").strip()
    if not host:
        return DEFAULT_DOCKER_SOCKET
    if host.startswith("unix://"):
        return Path(host[len("unix://"):])
    return None


def check_docker_socket(path: Path | None) -> None:
    """Refuse a Docker socket that every local user may write to (each of them would be root).

    A missing path passes: connecting fails later with the engine's own message.

    Raises:
        ConfigurationError: ``path`` is world-writable, naming it and the fix.
    """
    if path is None:
        return
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return
    if mode & 0o002:
        raise ConfigurationError(
            f"the Docker socket {path} is world-writable (mode {stat.S_IMODE(mode):o}): every local user is root on this host",
            hint=f"chmod 660 {path} (owner root, group docker) and restart the orchestrator; see docs/operations/security.md",
        )


def _size_ok(value: str | None) -> bool:
    return value is None or bool(_SIZE.match(str(value).strip()))


def device_requests(selection: GpuSelection) -> list[Any]:
    """Docker device requests for ``selection`` (``[]`` for CPU)."""
    if selection.none:
        return []
    from docker.types import DeviceRequest

    if selection.all:
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=list(selection.ids), capabilities=[["gpu"]])]


def parse_gpus(gpus: str | None) -> tuple[list[Any], int | None]:
    """Turn ``"0,1"`` / ``"all"`` / ``None`` into device requests and a process count.

    Returns:
        ``(device_requests, nproc)``: ``nproc`` is :attr:`GpuSelection.count` (``-1`` for "all",
        ``None`` for CPU).

    Raises:
        ConfigurationError: ``gpus`` is neither ``all`` nor a comma-separated list of ids
            (:func:`pytrain.runners.base.parse_gpus`).
    """
    selection = parse_gpu_selection(gpus)
    return device_requests(selection), selection.count


def training_command(nproc: int | None) -> tuple[list[str] | None, list[str]]:
    """The container's ``(entrypoint, command)`` for a task with ``nproc`` GPUs.

    One GPU or CPU: the image's entrypoint (``python -m pytrain.training``). Several GPUs (or
    ``-1`` = all): ``torchrun --standalone --nproc_per_node=N -m pytrain.training``.
    """
    args = ["--task-dir", CONTAINER_TASK_DIR, "--sources-root", CONTAINER_SOURCES_DIR]
    launch = torchrun_args(nproc)
    return (None, args) if launch is None else (["torchrun", *launch], args)


def _host_path(path: Path, local_root: Path, host_root: Path | None, mounts: Sequence[tuple[str, str]] = ()) -> str:
    """Translate a path as this process sees it into the Docker host's path.

    ``host_root`` (``settings.host_*_dir``, from ``PYTRAIN_HOST_*_DIR``) wins; else, inside a container, the longest of
    this container's own bind mounts (``(destination, source)``) that holds the path; else the
    path itself.
    """
    path = Path(path).resolve()
    if host_root is not None:
        try:
            return str(Path(host_root) / path.relative_to(Path(local_root).resolve()))
        except ValueError:
            pass
    best: tuple[str, str] | None = None
    for destination, source in mounts:
        dest = Path(destination)
        if (path == dest or dest in path.parents) and (best is None or len(destination) > len(best[0])):
            best = (destination, source)
    if best is not None:
        return str(Path(best[1]) / path.relative_to(best[0]))
    return str(path)


def _share_clip_cache(root: Path, uid: int, gid: int) -> None:
    """Let the container's user ``uid:gid`` fill the clip cache at ``root``: its folders and lock
    files become that user's (a few hundred at most; the entries stay whoever wrote them: evicting
    one needs only its folder)."""
    root.mkdir(parents=True, exist_ok=True)
    for dirpath, _, filenames in os.walk(root):
        os.chown(dirpath, uid, gid)
        for name in filenames:
            if name.endswith(".lock"):
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _own_bind_mounts(client: "docker.DockerClient") -> list[tuple[str, str]] | None:
    """``(destination, host source)`` of this process's container's bind mounts; ``None`` when this
    process is not in a container of ``client``'s engine (on a host, or in another engine's container)."""
    if not Path("/.dockerenv").exists():
        return None
    try:
        attrs = client.api.inspect_container(socket.gethostname())
    except Exception:  # noqa: BLE001 - not found / other engine: no translation
        return None
    return [(m["Destination"], m["Source"]) for m in attrs.get("Mounts") or [] if m.get("Type") == "bind"]


class _ContainerRun:
    """A started training container (:class:`~pytrain.runners.base.RunHandle`).

    Args:
        container: the started container.
        memory_limit: its memory limit as configured (``"16g"``), named in out-of-memory messages.
    """

    subject = "training container"

    def __init__(self, container: "Container", memory_limit: str | None) -> None:
        self.container = container
        self.memory_limit = memory_limit

    def _state(self) -> dict[str, Any]:
        return self.container.attrs.get("State") or {}

    def wait(self, seconds: float) -> int | None:
        deadline = time.monotonic() + seconds
        while True:
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                return self._state().get("ExitCode")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(_POLL_SECONDS, remaining))

    def stop(self, grace_seconds: float) -> None:
        import docker.errors

        try:
            self.container.stop(timeout=int(max(0, round(grace_seconds))))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            try:
                self.container.kill()
            except docker.errors.APIError:
                pass
        # `docker stop` returns when the engine has sent SIGKILL, which it may report a moment
        # before the container's state says so; the exit code is read after that.
        deadline = time.monotonic() + _STOPPED_SECONDS
        while True:
            self.container.reload()
            if not self._state().get("Running") or time.monotonic() > deadline:
                return
            time.sleep(_POLL_SECONDS)

    def output_tail(self) -> str:
        try:
            raw = self.container.logs(stdout=False, stderr=True, tail=STDERR_TAIL_LINES)
        except Exception:  # noqa: BLE001 - a missing tail must not hide the outcome
            raw = b""
        tail = raw.decode("utf-8", errors="replace").rstrip()
        engine_error = self._state().get("Error")
        if engine_error:  # e.g. the runtime could not set up a device: the engine's own words
            tail = f"{tail}\ndocker: {engine_error}".lstrip()
        return tail

    def oom_evidence(self, exit_code: int | None) -> str | None:
        if self._state().get("OOMKilled"):
            return f"limit {self.memory_limit or 'host memory'}"
        return None


class DockerRunner:
    """Runs each task in its own training container. Implements :class:`pytrain.runners.base.Runner`.

    Args:
        settings: PyTrain settings (image, limits, GPUs, key file, timeout).
        client: a Docker client; default one for ``DOCKER_HOST`` / the local socket.
        image: use this image instead of the content-hash training image (no build).
        base_image: overrides ``settings.base_image`` for the build.
        entrypoint, command: override the container's entrypoint/command (debugging, tests).
        on_output: called with each chunk of the container's output (``container_up.sh`` echoes it).
        on_build_line: called with each line of build output.
        stop_grace_seconds: how long ``docker stop`` waits after SIGTERM before SIGKILL (seconds).
        worker_id: written into the ``org.pytrain.worker`` label.
        host_sources_dir, host_model_tasks_dir: see the module docstring (default:
            ``settings.host_sources_dir`` / ``settings.host_model_tasks_dir``, i.e.
            ``PYTRAIN_HOST_SOURCES_DIR`` / ``PYTRAIN_HOST_MODEL_TASKS_DIR``).
        environment: extra environment variables for the container; never secrets (the rule of
            :func:`pytrain.runners.base.is_secret_variable`: such a name raises ConfigurationError).
        context_dir: repository root the image is built from (default: this checkout).
        torch_home: the pretrained weights folder (``hub/checkpoints/``, :mod:`pytrain.weights`), mounted
            read-only at ``/opt/torch-home`` as the container's ``TORCH_HOME`` when it exists;
            default ``settings.torch_home`` (``PYTRAIN_TORCH_HOME``).
        memlock_bytes: the container's locked-memory limit; default ``settings.container_memlock``
            (``-1``: unlimited, NVIDIA's recommendation). A host whose own hard limit is lower
            (``ulimit -Hl``; some CI sandboxes) cannot grant it: set that limit there.
        docker_socket: the engine's socket file, checked before anything else; default
            :func:`docker_socket_path`.

    Raises:
        ConfigurationError: a size/limit setting is malformed, the Docker socket is world-writable,
            or ``environment`` holds a secret-looking variable.
        RunnerError: no Docker engine answers.
    """

    name = "docker"

    def __init__(
        self,
        settings: Settings,
        *,
        client: "docker.DockerClient | None" = None,
        image: str | None = None,
        base_image: str | None = None,
        entrypoint: Sequence[str] | None = None,
        command: Sequence[str] | None = None,
        on_output: Callable[[bytes], None] | None = None,
        on_build_line: Callable[[str], None] | None = None,
        stop_grace_seconds: float = 5.0,
        worker_id: str | None = None,
        host_sources_dir: Path | None = None,
        host_model_tasks_dir: Path | None = None,
        environment: dict[str, str] | None = None,
        context_dir: Path | None = None,
        memlock_bytes: int | None = None,
        torch_home: Path | None = None,
        docker_socket: Path | None = None,
    ) -> None:
        check_docker_socket(docker_socket if docker_socket is not None else docker_socket_path())
        for name, value in (("PYTRAIN_CONTAINER_MEMORY", settings.container_memory), ("PYTRAIN_SHM_SIZE", settings.shm_size)):
            if not _size_ok(value):
                raise ConfigurationError(f"{name}={value!r} is not a size", hint="use a number with an optional unit b/k/m/g, e.g. '16g'")
        if stop_grace_seconds < 0:
            raise ConfigurationError(f"stop_grace_seconds must be >= 0, got {stop_grace_seconds}")
        parse_gpus(settings.gpus)  # validate early
        self.settings = settings
        self.client = client if client is not None else docker_client()
        self.image = image
        self.base_image = base_image
        self.entrypoint = list(entrypoint) if entrypoint is not None else None
        self.command = list(command) if command is not None else None
        self.on_output = on_output
        self.on_build_line = on_build_line
        self.stop_grace_seconds = stop_grace_seconds
        self.worker_id = worker_id or settings.worker_id or f"{os.uname().nodename}-{os.getpid()}"
        self.host_sources_dir = host_sources_dir or settings.host_sources_dir
        self.host_model_tasks_dir = host_model_tasks_dir or settings.host_model_tasks_dir
        self.environment = check_no_secrets(environment or {}, "DockerRunner(environment=...)")
        self.context_dir = context_dir
        self.torch_home = Path(torch_home if torch_home is not None else settings.torch_home)
        self._warned_unshared_cache = False
        if memlock_bytes is None:
            memlock_bytes = settings.container_memlock
        if memlock_bytes < -1:
            raise ConfigurationError(f"memlock_bytes must be -1 (unlimited) or >= 0, got {memlock_bytes}")
        self.memlock_bytes = memlock_bytes
        self.last_image_result = None

    # ------------------------------------------------------------------------------------------
    def _check_task(self, task: PreparedTask) -> None:
        task_dir = Path(task.task_dir)
        if not task_dir.is_dir():
            raise RunnerError(f"task {task.task_id}: task folder {task_dir} does not exist", hint="the orchestrator prepares it before running")
        for name in (TASK_SPEC, MANIFEST):
            if not (task_dir / name).is_file():
                raise RunnerError(f"task {task.task_id}: {task_dir / name} is missing", hint="the orchestrator writes task.json and manifest.csv")
        if not Path(task.sources_root).is_dir():
            raise RunnerError(f"task {task.task_id}: sources root {task.sources_root} does not exist", hint="set PYTRAIN_SOURCES_DIR")
        timeout = self._timeout(task)
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"task {task.task_id}: timeout must be > 0 seconds, got {timeout}")

    def _timeout(self, task: PreparedTask) -> float | None:
        return task.timeout_seconds if task.timeout_seconds is not None else self.settings.task_timeout_seconds

    def resolve_image(self) -> str:
        """The image tag to run: ``image`` if given, else the (possibly just built) training image.

        Raises:
            RunnerError, CredentialsError: see :func:`~pytrain.runners.images.ensure_train_image`.
        """
        if self.image is not None:
            return self.image
        result = ensure_train_image(
            self.client, self.settings, base_image=self.base_image, context_dir=self.context_dir, on_line=self.on_build_line
        )
        self.last_image_result = result
        return result.tag

    def _user_for(self, config: dict[str, Any], task_dir: Path, sources_root: Path) -> str | None:
        """Which user the container runs as, and make the task folder writable for it.

        As root (the orchestrator container, CI), the task folder is handed to the image's
        non-root user; otherwise the container runs as this process's uid:gid so files stay ours.
        """
        if os.geteuid() != 0:
            return f"{os.getuid()}:{os.getgid()}"
        if Path(sources_root).stat().st_mode & 0o005 != 0o005:
            logger.warning("sources root %s is not readable by others; the container's non-root user may not read it "
                           "(chmod o+rx it and its dataset folders)", sources_root)
        user = config.get("User") or ""
        uid_text, _, gid_text = user.partition(":")
        if not uid_text.isdigit() or int(uid_text) == 0:
            return None  # the image's own user (names cannot be resolved here)
        uid = int(uid_text)
        gid = int(gid_text) if gid_text.isdigit() else uid
        for dirpath, dirnames, filenames in os.walk(task_dir):
            os.chown(dirpath, uid, gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
        _share_clip_cache(Path(self.settings.clip_cache_dir), uid, gid)
        return None

    def _clip_cache(self, own: Sequence[tuple[str, str]] | None) -> tuple[list["Mount"], dict[str, str]]:
        """The mount and variables of the host's shared clip cache (``settings.clip_cache_dir``, made
        when missing), writable at :data:`CONTAINER_CLIP_CACHE`. No mount and no folder variable (a
        warning, once) when this orchestrator runs in a container and the folder is on none of its
        bind mounts: the Docker host has no such folder to mount, so each training container then
        caches inside its task folder (training's default) -- mount the cache (compose does: ``CLIP_CACHE_DIR``) to share it."""
        from docker.types import Mount

        folder = Path(self.settings.clip_cache_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        environment = clip_cache_environment(self.settings, CONTAINER_CLIP_CACHE)
        if own is not None and not any(folder == Path(d) or Path(d) in folder.parents for d, _ in own):
            if not self._warned_unshared_cache:
                self._warned_unshared_cache = True
                logger.warning("clip cache %s is on none of this container's bind mounts, so training containers cannot "
                            "share it: each task caches its clips in its own folder. Bind-mount a host folder there "
                            "(docker-compose.yml: CLIP_CACHE_DIR) to share decoded clips between tasks", folder)
            del environment[CACHE_DIR_ENV]
            return [], environment
        return [Mount(CONTAINER_CLIP_CACHE, _host_path(folder, folder, None, own or ()), type="bind", read_only=False)], environment

    def _mounts(self, task: PreparedTask, task_dir: Path) -> tuple[list["Mount"], dict[str, str]]:
        """The training container's bind mounts (sources read-only, the task folder, the clip cache,
        ``TORCH_HOME`` read-only when there is one) as the Docker host sees them, and its environment."""
        from docker.types import Mount

        own = _own_bind_mounts(self.client)
        binds = own or ()
        mounts = [
            Mount(CONTAINER_SOURCES_DIR, _host_path(task.sources_root, self.settings.sources_dir, self.host_sources_dir, binds), type="bind", read_only=True),
            Mount(CONTAINER_TASK_DIR, _host_path(task_dir, self.settings.model_tasks_dir, self.host_model_tasks_dir, binds), type="bind", read_only=False),
        ]
        cache_mounts, cache_environment = self._clip_cache(own)
        mounts += cache_mounts
        environment = {"PYTHONUNBUFFERED": "1", "HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib",
                       DECODER_ENV: self.settings.decoder, **cache_environment, **self.environment}
        if self.torch_home.is_dir():  # the orchestrator refused pretrained tasks whose file is missing
            mounts.append(Mount(CONTAINER_TORCH_HOME, _host_path(Path(self.torch_home), Path(self.torch_home), None, binds), type="bind", read_only=True))
            environment.setdefault("TORCH_HOME", CONTAINER_TORCH_HOME)
        return mounts, environment

    def _create(self, task: PreparedTask, image: str) -> tuple["Container", list[str]]:
        """Create (not start) the task's container; returns it and its command line."""
        from docker.types import Ulimit

        gpus = task.gpus if task.gpus is not None else self.settings.gpus
        device_requests, nproc = parse_gpus(gpus)
        entrypoint, command = training_command(nproc)
        if self.entrypoint is not None:
            entrypoint = self.entrypoint
        if self.command is not None:
            command = self.command
        task_dir = Path(task.task_dir).resolve()
        config = self.client.images.get(image).attrs.get("Config") or {}
        user = self._user_for(config, task_dir, Path(task.sources_root))
        mounts, environment = self._mounts(task, task_dir)
        memory = self.settings.container_memory
        kwargs: dict[str, Any] = dict(
            image=image,
            command=command,
            name=f"pytrain-task-{task.task_id}-{os.urandom(3).hex()}",
            labels={
                LABEL_MANAGED: "1",
                LABEL_TASK_ID: str(task.task_id),
                LABEL_MODEL: task.spec.model_name,
                LABEL_WORKER: self.worker_id,
            },
            environment=environment,
            mounts=mounts,
            working_dir=CONTAINER_TASK_DIR,
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": "rw,exec,mode=1777"},
            shm_size=self.settings.shm_size,
            ulimits=[Ulimit(name="memlock", soft=self.memlock_bytes, hard=self.memlock_bytes), Ulimit(name="stack", soft=STACK_BYTES, hard=STACK_BYTES)],
            pids_limit=self.settings.container_pids_limit,
            cap_drop=["ALL"],  # training needs no capability; the task folder is the user's own
            security_opt=["no-new-privileges"],
            device_requests=device_requests or None,
            init=True,  # tini as PID 1 forwards SIGTERM, so `docker stop` ends python at once
            detach=True,
        )
        if entrypoint is not None:
            kwargs["entrypoint"] = entrypoint
        command_line = [*(entrypoint or config.get("Entrypoint") or []), *command]
        if user is not None:
            kwargs["user"] = user
        if memory:
            kwargs["mem_limit"] = memory
            kwargs["memswap_limit"] = memory  # no swap: over the limit means OOM-killed
        return self.client.containers.create(**kwargs), command_line

    # ------------------------------------------------------------------------------------------
    def run(self, task: PreparedTask, cancel: threading.Event, stop: threading.Event | None = None) -> RunResult:
        """Run ``task`` in a container and block until it ends. See :class:`~pytrain.runners.base.Runner`.

        Returns:
            SUCCEEDED / FAILED (exit code, stderr tail) / OUT_OF_MEMORY / TIMED_OUT / CANCELLED /
            INTERRUPTED. ``details`` holds ``image``, ``image_built``, ``image_seconds``,
            ``container`` and ``seconds`` (the container's run time).

        Raises:
            RunnerError: the image cannot be built or the container cannot be created/started.
            CredentialsError: the base image needs the NGC key and it is missing or rejected.
        """
        import docker.errors

        self._check_task(task)
        if cancel.is_set():
            return run_result(Outcome.CANCELLED, None)
        self.reap_lost_runs(task)
        image = self.resolve_image()
        details: dict[str, Any] = {"image": image}
        if self.last_image_result is not None and self.image is None:
            details["image_built"] = self.last_image_result.built
            details["image_seconds"] = round(self.last_image_result.seconds, 3)
        container = None
        try:
            try:
                container, details["command"] = self._create(task, image)
                details["container"] = container.name
                container.start()
            except docker.errors.APIError as exc:
                text = str(getattr(exc, "explanation", None) or exc)
                hint = "check the GPU ids (nvidia-container-toolkit installed?) and the limits in PYTRAIN_* settings"
                if "rlimit" in text:
                    hint = ("the host's own hard limits (ulimit -Hl / -Hs of dockerd) are lower than the container's: raise them, "
                            "or set PYTRAIN_CONTAINER_MEMLOCK to the host's memlock limit in bytes")
                raise RunnerError(f"task {task.task_id}: cannot start a container from {image}: {text}", hint=hint) from exc
            logger.info("task %s: container %s started from %s", task.task_id, container.name, image)
            streamer = threading.Thread(target=self._stream_logs, args=(container, task.log_path), name=f"logs-{task.task_id}", daemon=True)
            streamer.start()
            result = supervise(
                _ContainerRun(container, self.settings.container_memory), task, cancel, stop,
                timeout_seconds=self._timeout(task), grace_seconds=self.stop_grace_seconds, poll_seconds=_POLL_SECONDS,
                details=details,
            )
            streamer.join(timeout=10)
            return result
        except docker.errors.DockerException as exc:
            raise RunnerError(f"task {task.task_id}: the Docker engine failed during the run: {exc}", hint="is dockerd still running?") from exc
        finally:
            if container is not None:
                self._remove(container)

    def _stream_logs(self, container: "Container", log_path: Path) -> None:
        """Append the container's stdout+stderr to ``log_path`` as it comes (thread body)."""
        try:
            with open(log_path, "ab") as log:
                for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    log.write(chunk)
                    log.flush()
                    if self.on_output is not None:
                        self.on_output(chunk)
        except Exception as exc:  # noqa: BLE001 - a log-stream failure must not fail the run
            logger.warning("log streaming of %s stopped: %s", getattr(container, "name", "?"), exc)

    def _remove(self, container: "Container") -> None:
        import docker.errors

        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            logger.warning("cannot remove container %s: %s", container.name, exc)

    def reap_lost_runs(self, task: PreparedTask) -> list[str]:
        """Remove the containers of ``task`` still on this engine, before its new run starts.

        The caller holds the task's lease, so such a container is a lost run's (its worker died, or
        was stopped past its lease): it would hold the task folder's run lock and make the new run
        end ``LOCKED``. Found by label (``org.pytrain.task-id``) and by the task folder mounted at
        ``/task`` (task ids repeat across databases; the folder, named with the task's uid, does
        not), removed with force (a running one is killed). A run on another engine cannot be
        reached: the new run then ends ``LOCKED`` and the worker re-queues the task until that run
        has gone.

        Returns:
            The names of the containers removed.

        Raises:
            RunnerError: the Docker engine cannot be reached.
        """
        import docker.errors

        folder = _host_path(Path(task.task_dir), self.settings.model_tasks_dir, self.host_model_tasks_dir, _own_bind_mounts(self.client) or ())
        try:
            labelled = self.client.containers.list(all=True, filters={"label": [LABEL_MANAGED, f"{LABEL_TASK_ID}={task.task_id}"]})
        except docker.errors.DockerException as exc:
            raise RunnerError(f"task {task.task_id}: cannot look for containers of a lost run: {exc}", hint="is the Docker engine running?") from exc
        lost = [c for c in labelled
                if any(m.get("Destination") == CONTAINER_TASK_DIR and m.get("Source") == folder for m in c.attrs.get("Mounts") or [])]
        for container in lost:
            logger.warning("task %s: removing container %s of a lost run (its worker is gone or lost the lease)", task.task_id, container.name)
            self._remove(container)
        return [container.name for container in lost]

    # ------------------------------------------------------------------------------------------
    def cleanup_orphans(self, active_task_ids: set[int]) -> set[int]:
        """Remove this worker's training containers whose task is not in ``active_task_ids``.

        The orchestrator calls this on start. Only containers labelled ``org.pytrain.worker`` with
        this runner's :attr:`worker_id` are considered: those of a task not in ``active_task_ids``
        (the tasks other workers run right now) are left over from this worker's crashed
        predecessor and are removed (force: running ones are killed), so the task can be
        re-queued without two trainings writing to one folder. Containers of other workers
        sharing this Docker engine (a second orchestrator with ``--gpus 4,5``) are never touched,
        whichever task they run.

        Returns:
            The task ids whose containers were removed.

        Raises:
            RunnerError: the Docker engine cannot be reached.
        """
        import docker.errors

        removed: set[int] = set()
        mine = [LABEL_MANAGED, f"{LABEL_WORKER}={self.worker_id}"]  # the engine ANDs label filters
        try:
            containers = self.client.containers.list(all=True, filters={"label": mine})
        except docker.errors.DockerException as exc:
            raise RunnerError(f"cannot list containers for orphan cleanup: {exc}", hint="is the Docker engine running?") from exc
        for container in containers:
            label = (container.labels or {}).get(LABEL_TASK_ID, "")
            try:
                task_id = int(label)
            except ValueError:
                continue
            if task_id in active_task_ids:
                continue
            logger.warning("removing orphaned container %s of task %s (worker %s)", container.name, task_id, self.worker_id)
            self._remove(container)
            removed.add(task_id)
        return removed


__all__ = ["DockerRunner", "check_docker_socket", "device_requests", "docker_socket_path", "parse_gpus", "training_command",
           "LABEL_TASK_ID", "LABEL_MANAGED"]
