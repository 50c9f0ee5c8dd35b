"""PyTrain settings: one validated object, read from ``PYTRAIN_*`` environment variables.

Defaults work on a laptop: every folder defaults to the repository's top-level folder of the same
name (``sources/``, ``model_repo/``, ``model_tasks/``, ``results/``), and with no
``PYTRAIN_DATABASE_URL`` PyTrain starts an embedded PostgreSQL server whose data lives under
``PYTRAIN_DATA_DIR`` (default ``.pytrain/`` in the repository).

Example::

    PYTRAIN_DATABASE_URL=postgresql+psycopg://user:pw@db:5432/pytrain pytrain orchestrate
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pytrain.errors import ConfigurationError
from pytrain.ray_values import RayAcceleratorType, RayAddress, RayContainerImage, RayMemory, RayPip, RayPython, RayResources
from pytrain.slurm_values import (
    ExtraSbatch, SlurmAccount, SlurmContainerImage, SlurmMemory, SlurmPartition, SlurmPython, SlurmQos,
)
from pytrain.training.clip_cache import DEFAULT_CACHE_GB
from pytrain.video import DECODERS


def project_root() -> Path:
    """The repository root when running from a checkout, else the current directory.

    Returns:
        The folder holding ``pyproject.toml`` two levels above this package (an editable
        install or a source checkout), or :func:`Path.cwd` for a regular install.
    """
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


_ROOT = project_root()

#: What ``PYTRAIN_TRITON_ACCELERATOR`` may name (see :func:`pytrain.publish.triton_config.gpu_config_pbtxt`).
TRITON_ACCELERATORS = ("none", "tensorrt")


class Settings(BaseSettings):
    """All of PyTrain's settings. Every field reads ``PYTRAIN_<FIELD NAME>`` from the environment.

    Raises:
        pydantic.ValidationError: on a value of the wrong type or out of range; the message
            names the variable.
    """

    model_config = SettingsConfigDict(env_prefix="PYTRAIN_", extra="ignore", validate_default=True)

    # --- database -------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the PostgreSQL server (postgresql+psycopg://...). "
        "Unset: start the embedded server under data_dir.",
    )
    data_dir: Path = Field(default=_ROOT / ".pytrain", description="PyTrain's own state (embedded PostgreSQL data, logs).")

    # --- experiment tracking (pytrain.tracking) -------------------------------------------
    mlflow: Literal["on", "off"] = Field(
        default="on", description="Log every run to MLflow from the orchestrator (a side channel: a failure only warns).",
    )
    mlflow_tracking_uri: SecretStr | None = Field(
        default=None,
        description="MLflow tracking URI (http://host:5000, or a postgresql+psycopg:// store). Unset: database 'mlflow' "
        "on PyTrain's PostgreSQL server (created if missing), artifacts under <data_dir>/mlflow-artifacts.",
    )

    # --- folders --------------------------------------------------------------------------
    sources_dir: Path = Field(default=_ROOT / "sources", description="Root of the datasets: <sources_dir>/<dataset>/<class_subclass>/*.mp4")
    model_repo_dir: Path = Field(default=_ROOT / "model_repo", description="Triton model repository PyTrain publishes into.")
    model_tasks_dir: Path = Field(default=_ROOT / "model_tasks", description="One folder per task: spec, manifest, logs, checkpoints, ONNX.")
    results_dir: Path = Field(default=_ROOT / "results", description="results/<model>/<version>/: metrics, plots, the task row.")
    # Pretrained weights (pytrain.weights): filled by `pytrain weights fetch`, read-only for training.
    torch_home: Path | None = Field(
        default=None,
        description="Pretrained weights folder in torch's layout (hub/checkpoints/): training's TORCH_HOME, mounted "
        "read-only into training containers. Unset: <data_dir>/torch.",
    )
    weights_base_url: str = Field(
        default="https://download.pytorch.org/models", min_length=1,
        description="Where `pytrain weights fetch` downloads torchvision's weight files from (a mirror, or a test server).",
    )

    # --- orchestrator ---------------------------------------------------------------------
    # A plain name, not a fixed list: the runners register themselves (pytrain.runners.RUNNERS), and
    # get_runner rejects an unknown one naming those it knows; a new runner is not a settings change.
    runner: str = Field(default="local", min_length=1, description="How a claimed task is run: a registered runner (local, docker, slurm, ray).")
    worker_id: str | None = Field(default=None, description="Worker id in the task row; default <hostname>-gpu<ids> or <hostname>-cpu (stable across restarts).")
    lease_seconds: float = Field(default=60.0, gt=0, description="A running task whose lease is older than this is re-queued (seconds).")
    heartbeat_seconds: float = Field(default=5.0, gt=0, description="How often a worker renews its lease and reads progress (seconds).")
    poll_seconds: float = Field(default=5.0, gt=0, description="Polling fallback when no NOTIFY arrives (seconds).")
    max_attempts: int = Field(default=3, ge=1, description="A task whose lease expired this many times fails.")
    fence_margin_seconds: float | None = Field(
        default=None, gt=0,
        description="Self-fencing: a worker that has not renewed its lease for lease_seconds minus this margin stops "
        "its run itself, before another worker can claim the task (seconds). Keep it above the runner's stop time "
        "(local: 5 s grace). Unset: max(2 heartbeats, 10 % of the lease).",
    )
    task_timeout_seconds: float | None = Field(default=None, gt=0, description="Kill a task's run after this long (seconds); unset: no limit.")

    # --- serving --------------------------------------------------------------------------
    triton_grpc_url: str | None = Field(default=None, description="host:port of a Triton server to ask to load new versions (explicit model control).")
    triton_grpc_port: int = Field(default=8001, ge=1, le=65535, description="gRPC port of the embedded Triton server.")
    triton_http_port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the embedded Triton server.")
    triton_metrics_port: int = Field(default=8002, ge=1, le=65535, description="Metrics port of the embedded Triton server.")
    max_batch_size: int = Field(default=8, ge=1, description="max_batch_size written into config.pbtxt.")
    served_versions: int = Field(
        default=2, ge=1,
        description="Versions of a model Triton serves: the newest ones whose classes and clip size match the served "
        "config (config.pbtxt's version_policy); the others stay on disk for `pytrain rollback`.",
    )
    # Triton's model control (load, unload, config override) answers only requests carrying this key
    # (pytrain.serving.control; docs/adr/0006-triton-control-key.md).
    triton_control_key: SecretStr | None = Field(
        default=None,
        description="Key Triton's model-repository and model-config APIs require (header pytrain-control-key). "
        "Unset: read from triton_control_key_file, generated there (mode 0600) on first use.",
    )
    triton_control_key_file: Path | None = Field(
        default=None, description="File holding the control key; default <data_dir>/triton_control.key (compose: a secret file)."
    )
    triton_inference_key: SecretStr | None = Field(
        default=None, description="Optional: a key Triton's inference API requires too (header pytrain-inference-key); unset: inference is open."
    )
    triton_accelerator: Literal[TRITON_ACCELERATORS] = Field(  # type: ignore[valid-type]
        default="none",
        description="GPU config.pbtxt: 'tensorrt' runs the ONNX model through ONNX Runtime's TensorRT provider "
        "(FP16, engines cached in the model's folder); off by default: 3D convolutions gain little from it on some GPUs.",
    )
    triton_model_repository: str = Field(
        default="/models",
        description="The model repository's path as the production Triton sees it (docker-compose mounts model_repo at "
        "/models); TensorRT engine caches are written below it.",
    )

    # --- web console (pytrain.console; docs/console.md) -------------------------------------
    console_password_hash: SecretStr | None = Field(
        default=None,
        description="scrypt hash of the console's password (`pytrain console --hash-password` makes one). Unset: the "
        "console prints a login link with a token made at start and listens on a loopback address only.",
    )
    console_secret_key: SecretStr | None = Field(
        default=None, description="Key that signs the console's session cookies; unset: a random one per start (logins end with a restart).",
    )
    console_session_seconds: int = Field(default=12 * 3600, ge=60, description="How long a console login lasts (seconds).")
    console_tracking_url: str | None = Field(
        default=None,
        description="Base URL of MLflow's UI the console's Task page links a run to (`pytrain tracking ui`: http://127.0.0.1:5000). "
        "Unset: PYTRAIN_MLFLOW_TRACKING_URI when it is an http(s) URL, else no link.",
    )
    console_secure_cookie: bool = Field(
        default=False, description="Mark the session cookie Secure (set it when the console is reached over HTTPS through a reverse proxy).",
    )

    # --- decoding ----------------------------------------------------------------------
    decoder: Literal[DECODERS] = Field(  # type: ignore[valid-type]
        default=DECODERS[0],
        description="Video decoder of training and the client (pytrain.video): decord, or torchcodec (pip install "
        "torchcodec). Train and serve a model with the same one: their scalers round differently.",
    )

    # --- the shared decoded-clip cache and training proxies (docs/user-guide/data-loading.md) ---
    clip_cache_dir: Path | None = Field(
        default=None,
        description="The host's decoded-clip cache, shared by every task (training reads PYTRAIN_CLIP_CACHE_DIR); "
        "unset: <data_dir>/clip_cache. In compose: a volume; each host may keep its own.",
    )
    clip_cache_gb: float = Field(
        default=DEFAULT_CACHE_GB, gt=0, description="Size cap of the clip cache in GB (10^9 bytes); least recently used clips are evicted.",
    )

    # --- docker runner --------------------------------------------------------------------
    base_image: str = Field(default="nvcr.io/nvidia/pytorch:24.10-py3", description="Base image of the training container.")
    ngc_api_key_file: Path = Field(default=Path("~/api.key"), description="File holding the NGC API key; read only when the base image must be pulled.")
    gpus: str | None = Field(default=None, description="GPU ids for this worker's containers, e.g. '0,1'; 'all' for every GPU; unset: none.")
    container_memory: str | None = Field(default=None, description="Memory limit of a training container, e.g. '16g'.")
    container_pids_limit: int = Field(default=4096, ge=64, description="pids limit of a training container.")
    shm_size: str = Field(default="8g", description="/dev/shm size of a training container (DataLoader workers need it).")
    container_memlock: int = Field(
        default=-1, ge=-1,
        description="memlock ulimit of a training container in bytes; -1 = unlimited (NVIDIA's recommendation). "
        "Lower it only where the host's own hard limit is lower (ulimit -Hl; some CI sandboxes).",
    )
    # Paths on the Docker host, not on this machine: never resolved here (pytrain.runners.docker).
    host_sources_dir: Path | None = Field(
        default=None,
        description="sources_dir as the Docker host sees it, for the training container's bind mount when the "
        "orchestrator itself runs in a container; unset: read from the orchestrator container's own mounts.",
    )
    host_model_tasks_dir: Path | None = Field(
        default=None,
        description="model_tasks_dir as the Docker host sees it (see host_sources_dir); unset: read from the "
        "orchestrator container's own mounts.",
    )

    # --- slurm runner (docs/adr/0009-slurm-runner.md; docs/operations/slurm.md) --------------
    # Per node of a job; the task's `nodes` column says how many nodes, PYTRAIN_TASK_TIMEOUT_SECONDS the time limit.
    # The text ones reach the batch script: each must pass its rule (pytrain.slurm_values).
    slurm_partition: SlurmPartition | None = Field(default=None, description="sbatch --partition; unset: the cluster's default partition.")
    slurm_account: SlurmAccount | None = Field(default=None, description="sbatch --account; unset: the user's default account.")
    slurm_qos: SlurmQos | None = Field(default=None, description="sbatch --qos; unset: the default QOS.")
    slurm_gpus_per_node: int = Field(
        default=0, ge=0, description="sbatch --gpus-per-node, and torchrun processes per node; 0: one CPU process per node."
    )
    slurm_cpus_per_task: int | None = Field(default=None, ge=1, description="sbatch --cpus-per-task (one task per node); unset: Slurm's default.")
    slurm_mem: SlurmMemory | None = Field(default=None, description="sbatch --mem per node, e.g. '64G'; unset: the cluster's default.")
    slurm_extra_sbatch: ExtraSbatch | None = Field(
        default=None,
        description="More #SBATCH options, separated by ';' or newlines, each --name or --name=value of a resource or "
        "placement option (pytrain.slurm_values.EXTRA_SBATCH_OPTIONS), e.g. '--exclusive;--constraint=h100'."
    )
    slurm_container_image: SlurmContainerImage | None = Field(
        default=None,
        description="Run the job's steps in this enroot/pyxis image (e.g. 'nvcr.io#nvidia/pytorch:24.10-py3' or a .sqsh "
        "path; srun --container-image); unset: run slurm_python on the nodes.",
    )
    slurm_python: SlurmPython | None = Field(
        default=None,
        description="Python that runs training on the nodes (with PyTrain installed); default: this Python "
        "(sys.executable), or 'python' inside slurm_container_image.",
    )

    # --- ray runner (docs/adr/0017-ray-runner.md; docs/operations/ray.md) --------------------
    # Per node of a job (one placement-group bundle per node); the task's `nodes` column says how many
    # nodes. The values reach the cluster: each must pass its rule (pytrain.ray_values).
    ray_address: RayAddress | None = Field(
        default=None, description="The Ray cluster's Jobs API (the dashboard's address), e.g. 'http://ray-head:8265'; "
        "required with PYTRAIN_RUNNER=ray.",
    )
    ray_gpus_per_node: int = Field(default=0, ge=0, le=64, description="GPUs per node, and training processes per node; 0: one CPU process per node.")
    ray_cpus_per_node: float = Field(default=1.0, ge=0, le=1024, description="CPUs per node reserved for the training processes.")
    ray_memory: RayMemory | None = Field(default=None, description="Memory per node reserved in Ray's scheduler, e.g. '64G'; unset: none reserved.")
    ray_accelerator_type: RayAcceleratorType | None = Field(
        default=None, description="Only nodes with this accelerator type (Ray's accelerator_type:<T> resource, e.g. 'H100').",
    )
    ray_resources: RayResources = Field(
        default_factory=dict, description="Custom resources per node, as JSON, e.g. '{\"spot\": 1}'; nodes must advertise them.",
    )
    ray_container_image: RayContainerImage | None = Field(
        default=None, description="Run the job in this image (runtime_env image_uri; the cluster must allow containers).",
    )
    ray_pip: RayPip = Field(
        default_factory=list, description="Extra pip packages of the job's runtime environment, as a JSON list of "
        "requirement specifiers, e.g. '[\"torchcodec==0.17.0\"]' (the cluster must reach a package index).",
    )
    ray_python: RayPython = Field(
        default="python", description="The Python that runs the job's driver on the cluster (PyTrain and ray installed).",
    )

    @field_validator("sources_dir", "model_repo_dir", "model_tasks_dir", "results_dir", "data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("host_sources_dir", "host_model_tasks_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # PYTRAIN_HOST_SOURCES_DIR= (set but empty, as compose files write it) means unset, not ".".
        return None if value == "" else value

    @field_validator("ngc_api_key_file", "triton_control_key_file")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @model_validator(mode="after")
    def _default_torch_home(self) -> "Settings":
        self.torch_home = (self.data_dir / "torch") if self.torch_home is None else self.torch_home.expanduser().resolve()
        return self

    @model_validator(mode="after")
    def _default_clip_cache_dir(self) -> "Settings":
        self.clip_cache_dir = (self.data_dir / "clip_cache") if self.clip_cache_dir is None else self.clip_cache_dir.expanduser().resolve()
        return self

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> "Settings":
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"PYTRAIN_HEARTBEAT_SECONDS ({self.heartbeat_seconds}) must be smaller than "
                f"PYTRAIN_LEASE_SECONDS ({self.lease_seconds}), or every lease expires between heartbeats"
            )
        return self

    @property
    def fence_seconds(self) -> float:
        """How long a worker may go without renewing its lease before it stops its run itself:
        ``lease_seconds - fence_margin_seconds`` (default margin: max(2 heartbeats, 10 % of the lease))."""
        margin = self.fence_margin_seconds
        if margin is None:
            margin = max(2 * self.heartbeat_seconds, 0.1 * self.lease_seconds)
        return self.lease_seconds - margin

    @model_validator(mode="after")
    def _fence_after_a_heartbeat(self) -> "Settings":
        if self.fence_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"PYTRAIN_LEASE_SECONDS ({self.lease_seconds}) minus the fencing margin ({self.lease_seconds - self.fence_seconds:g} s, "
                f"PYTRAIN_FENCE_MARGIN_SECONDS) must exceed PYTRAIN_HEARTBEAT_SECONDS ({self.heartbeat_seconds}), "
                "or a worker stops its run between two heartbeats: lengthen the lease or shorten the margin"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment.

    Tests that change ``PYTRAIN_*`` variables call ``get_settings.cache_clear()``.
    """
    return Settings()


def settings_error(exc: ValidationError) -> ConfigurationError:
    """A :class:`ConfigurationError` naming each bad ``PYTRAIN_*`` variable and its value, from the
    ``pydantic.ValidationError`` of :class:`Settings` (a database URL is shown as ``'***'``: it may
    hold a password)."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            name = "PYTRAIN_" + "_".join(str(p) for p in error["loc"]).upper()
            value = "'***'" if "DATABASE_URL" in name or "TRACKING_URI" in name else repr(error["input"])
            problems.append(f"{name}={value}: {message}")
        else:  # a rule across fields: its message names the variables
            problems.append(message)
    return ConfigurationError(f"invalid settings: {'; '.join(problems)}", hint="fix or unset those PYTRAIN_* environment variables")


def with_overrides(settings: Settings | None = None, **overrides: Any) -> Settings:
    """``settings`` (default: :func:`get_settings`) with ``overrides`` laid over it, validated like
    the environment (a command-line option, the demo's sources root): the one way to change a
    setting. ``None`` values are ignored (an option left unset).

    Raises:
        ConfigurationError: a bad value, named as its ``PYTRAIN_*`` variable (:func:`settings_error`).
    """
    try:
        base = get_settings() if settings is None else settings
        updates = {name: value for name, value in overrides.items() if value is not None}
        return Settings(**{**base.model_dump(), **updates}) if updates else base
    except ValidationError as exc:
        raise settings_error(exc) from None
