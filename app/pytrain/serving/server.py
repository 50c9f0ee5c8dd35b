"""The embedded Triton Inference Server: the ``tritonserver`` binary shipped in ``nvidia-pytriton``.

That wheel carries a real Triton 2.5x build with only the Python backend, which runs on a machine
without a GPU. PyTrain serves each model there through ``configs/cpu.pbtxt`` (``backend:
"python"``, chosen with ``--model-config-name=cpu``) and the ``model.py`` published beside
``model.onnx``, which runs the ONNX model with onnxruntime.

What starting it takes (each step is a function below):

1. locate the binary, its shared libraries (``nvidia_pytriton.libs/`` -> ``LD_LIBRARY_PATH``) and
   the Python backend (:func:`locate_tritonserver`);
2. a backend folder of our own holding the Python backend *and* its stub
   ``triton_python_backend_stub`` for this Python version (:func:`prepare_backend_dir`);
3. ``PATH`` starting with this interpreter's ``bin/``: the stub's embedded Python finds its
   ``sys.prefix`` (and so numpy and onnxruntime) from the ``python3`` on ``PATH``;
4. loopback ports, then wait until the server answers ``is_server_ready`` over gRPC;
5. model control (the ``model-repository`` and ``model-config`` APIs, both protocols) answers only
   requests carrying the control key (:mod:`pytrain.serving.control`); inference, health and
   metadata stay open unless an inference key is given.

Example::

    with TritonServer(model_repo, grpc_port=8001, http_port=8000, metrics_port=8002) as server:
        print(server.grpc_url)   # 127.0.0.1:8001
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from pytrain.errors import ServingError
from pytrain.serving.control import control_key as find_control_key
from pytrain.serving.control import redact, restricted_api_args
from pytrain.settings import Settings

log = logging.getLogger(__name__)

ModelControlMode = Literal["explicit", "poll", "none"]
LOG_FILE = "tritonserver.log"


@dataclass(frozen=True)
class TritonInstallation:
    """Paths of the ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel.

    Attributes:
        binary: ``pytriton/tritonserver/bin/tritonserver``.
        library_dir: ``nvidia_pytriton.libs/`` (goes on ``LD_LIBRARY_PATH``).
        python_backend_dir: ``pytriton/tritonserver/backends/python/``.
        python_stub: the stub for this interpreter's Python version.
    """

    binary: Path
    library_dir: Path
    python_backend_dir: Path
    python_stub: Path


def locate_tritonserver() -> TritonInstallation:
    """Find the ``tritonserver`` binary and its Python backend inside the installed ``nvidia-pytriton``.

    Raises:
        ServingError: ``nvidia-pytriton`` is not installed, or a needed file is missing.
    """
    try:
        import pytriton
    except ImportError as exc:
        raise ServingError(
            "the embedded Triton server needs the nvidia-pytriton package", hint="pip install 'pytrain[serve]'"
        ) from exc
    package = Path(pytriton.__file__).resolve().parent
    server_dir = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstallation(
        binary=server_dir / "bin" / "tritonserver",
        library_dir=package.parent / "nvidia_pytriton.libs",
        python_backend_dir=server_dir / "backends" / "python",
        python_stub=server_dir / "python_backend_stubs" / version / "triton_python_backend_stub",
    )
    for path in (install.binary, install.python_backend_dir / "libtriton_python.so", install.python_stub):
        if not path.exists():
            raise ServingError(
                f"{path} is missing from nvidia-pytriton at {package}",
                hint=f"reinstall nvidia-pytriton; it must ship a Python {version} backend stub",
            )
    return install


def prepare_backend_dir(install: TritonInstallation, work_dir: Path) -> Path:
    """A ``--backend-directory`` holding ``python/`` = the wheel's Python backend plus its stub.

    Files are copied (not linked): the backend looks for the stub next to its own ``.so``.

    Returns:
        ``work_dir/backends``.
    """
    backends = Path(work_dir) / "backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in [*install.python_backend_dir.iterdir(), install.python_stub]:
        if src.is_file():
            dst = python_dir / src.name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
                shutil.copy2(src, dst)
    os.chmod(python_dir / install.python_stub.name, 0o755)
    return backends


def default_ort_threads() -> int:
    """onnxruntime threads per served model instance: half the CPUs, at least 1."""
    return max(1, (os.cpu_count() or 2) // 2)


# Runs the server through a tiny launcher that asks the kernel to send it SIGTERM when PyTrain's
# process dies (PR_SET_PDEATHSIG survives exec), so a test run or CLI killed without cleanup does
# not leave tritonserver behind. A launcher instead of Popen's preexec_fn, which is unsafe in a
# process with threads (gRPC, the orchestrator's heartbeat).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "except Exception:\n"
    "    pass\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class TritonServer:
    """A ``tritonserver`` child process serving a model repository; a context manager.

    Args:
        model_repository: the ``model_repo/`` folder.
        grpc_port, http_port, metrics_port: ports on ``host``.
        host: address to listen on (default loopback).
        model_control_mode: ``explicit`` (default; every model in the repository is loaded at
            start, and publishing asks for new versions), ``poll`` (re-scans the repository every
            ``poll_seconds``) or ``none``.
        config_name: ``--model-config-name`` (``configs/<name>.pbtxt``); ``None`` uses
            ``config.pbtxt`` (needs the ONNX Runtime backend, absent from the wheel).
        work_dir: backend folder and log file; default ``<PYTRAIN_DATA_DIR>/triton``.
        startup_timeout_s: how long :meth:`start` waits for readiness, seconds.
        poll_seconds: repository poll interval in ``poll`` mode, seconds.
        ort_threads: onnxruntime intra-op threads per model instance; default half the CPUs
            (at least 1), leaving the rest to Triton's gRPC threads and the clients: on 2 cores
            one thread gave lower latency than two (see ``benchmarks/bench_triton.py``).
        control_key: the key model control requires (:func:`pytrain.serving.control.control_key`
            of the process settings when ``None``: ``PYTRAIN_TRITON_CONTROL_KEY`` or the key file,
            created on first use). There is no way to start an unrestricted server.
        inference_key: when given, inference needs its key too.

    Raises (from :meth:`start`):
        ServingError: binary missing, a port in use, the server exited, or not ready in time;
            carries the exit code and the log tail.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        model_control_mode: ModelControlMode = "explicit",
        config_name: str | None = "cpu",
        work_dir: Path | None = None,
        startup_timeout_s: float = 180.0,
        poll_seconds: int = 2,
        ort_threads: int | None = None,
        control_key: SecretStr | None = None,
        inference_key: SecretStr | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.grpc_port, self.http_port, self.metrics_port = grpc_port, http_port, metrics_port
        self.host = host
        self.model_control_mode = model_control_mode
        self.config_name = config_name
        if work_dir is None:
            from pytrain.settings import get_settings

            work_dir = get_settings().data_dir / "triton"
        self.work_dir = Path(work_dir)
        self.startup_timeout_s = startup_timeout_s
        self.poll_seconds = poll_seconds
        self.ort_threads = ort_threads if ort_threads is not None else default_ort_threads()
        self.control_key = control_key
        self.inference_key = inference_key
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> "TritonServer":
        """A server over ``settings.model_repo_dir`` on the ``PYTRAIN_TRITON_*_PORT`` ports,
        working in ``<data_dir>/triton``, with these settings' control (and inference) key;
        keyword ``overrides`` go to the constructor.

        Raises:
            ConfigurationError: the control key is malformed or its file cannot be created.
        """
        kwargs: dict[str, object] = {
            "grpc_port": settings.triton_grpc_port,
            "http_port": settings.triton_http_port,
            "metrics_port": settings.triton_metrics_port,
            "work_dir": settings.data_dir / "triton",
            "control_key": find_control_key(settings),
            "inference_key": settings.triton_inference_key,
        }
        kwargs.update(overrides)
        return cls(settings.model_repo_dir, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (what ``tritonclient.grpc`` and ``pytrain predict`` take)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr."""
        return self.work_dir / LOG_FILE

    def command(self, install: TritonInstallation, backend_dir: Path) -> list[str]:
        """The ``tritonserver`` command line (it holds the keys: log it through :func:`redact`).

        Raises:
            ConfigurationError: no control key was given and the settings' one is malformed.
        """
        cmd = [
            str(install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--model-control-mode={self.model_control_mode}",
            "--exit-on-error=false",  # one broken model must not take the others down
            "--strict-readiness=false",
            # Clips are ~0.6 MB (16x112x112x3) to 3 MB (20x224x224x3) each: start with room for a batch
            # of small clips (the region grows for more) but small enough for a 64 MB /dev/shm.
            "--backend-config=python,shm-default-byte-size=8388608",
            "--log-verbose=0",
        ]
        if self.config_name:
            cmd.append(f"--model-config-name={self.config_name}")
        if self.model_control_mode == "explicit":
            cmd.append("--load-model=*")
        if self.model_control_mode == "poll":
            cmd.append(f"--repository-poll-secs={self.poll_seconds}")
        if self.control_key is None:
            self.control_key = find_control_key()
        cmd += restricted_api_args(self.control_key, self.inference_key)
        return cmd

    def environment(self, install: TritonInstallation) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.library_dir), env.get("LD_LIBRARY_PATH", "")) if p)
        # The Python stub's interpreter finds numpy/onnxruntime via the python3 first on PATH.
        env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
        env["PYTRAIN_ORT_THREADS"] = str(self.ort_threads)
        return env

    # ------------------------------------------------------------------------------------
    def start(self) -> "TritonServer":
        """Start ``tritonserver`` and wait until it is ready; returns ``self``.

        Raises:
            ServingError: see the class docstring.
        """
        if self.process is not None and self.process.poll() is None:
            return self
        if not self.model_repository.is_dir():
            self.model_repository.mkdir(parents=True, exist_ok=True)
        install = locate_tritonserver()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        backend_dir = prepare_backend_dir(install, self.work_dir)
        for port in (self.grpc_port, self.http_port, self.metrics_port):
            _check_port_free(self.host, port)
        cmd = self.command(install, backend_dir)
        log.info("starting tritonserver on %s (gRPC), repository %s, log %s", self.grpc_url, self.model_repository, self.log_path)
        log.debug("command: %s", redact(" ".join(cmd), self.control_key, self.inference_key))
        self._log_handle = open(self.log_path, "ab")
        # Several servers may share a work dir (and so the log): error tails read this run's part only.
        self._log_offset = self._log_handle.seek(0, os.SEEK_END)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, *cmd],
                stdout=self._log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(install),
                cwd=self.work_dir,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise ServingError(f"cannot start {install.binary}: {exc}") from exc
        try:
            self.wait_ready(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("Triton is ready: gRPC %s, HTTP %s", self.grpc_url, self.http_url)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the server reports ready over gRPC.

        Raises:
            ServingError: the process exited (with its exit code and log tail) or the timeout passed.
        """
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            while True:
                if self.process is None:
                    raise ServingError("tritonserver is not running")
                code = self.process.poll()
                if code is not None:
                    raise ServingError(
                        f"tritonserver exited with code {code} during start-up on {self.grpc_url}: {self.log_tail()}",
                        hint=f"full log: {self.log_path}",
                    )
                try:
                    if client.is_server_ready(client_timeout=2.0):
                        return
                except Exception:  # not listening yet
                    pass
                if time.monotonic() > deadline:
                    raise ServingError(
                        f"tritonserver on {self.grpc_url} was not ready after {timeout_s:.0f} s: {self.log_tail()}",
                        hint=f"full log: {self.log_path}",
                    )
                time.sleep(0.25)

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the server log, joined with `` | ``."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(getattr(self, "_log_offset", 0))
                text = handle.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        # A rejected flag is echoed in the log; the keys must not travel on in error messages.
        return redact(" | ".join(text[-lines:]), self.control_key, self.inference_key)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s`` seconds); returns its exit code."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                log.info("stopping tritonserver on %s", self.grpc_url)
                process.terminate()
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver did not stop in %.0f s; killing it", timeout_s)
                    _kill_group(process.pid)
                    process.wait(10)
            else:
                process.wait()
            code = process.returncode
            _kill_group(process.pid)  # Python-backend stubs left behind, if any
        self._close_log()
        return code

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _kill_group(pgid: int) -> None:
    # The server was started in its own session: its process group is ours to clean up.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServingError(
                f"port {host}:{port} is in use; tritonserver cannot listen there",
                hint="stop the other server or set PYTRAIN_TRITON_GRPC_PORT / _HTTP_PORT / _METRICS_PORT",
            ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (for tests and ``pytrain serve --port 0``)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
