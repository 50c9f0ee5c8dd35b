"""The ``ray`` runner: one Ray job per run, through the cluster's Jobs API, on one node or several.

The orchestrator runs anywhere it reaches the cluster's Jobs API (``PYTRAIN_RAY_ADDRESS``, the
dashboard's ``http://head:8265``) and keeps doing what it does with the other runners: claim,
lease, heartbeat, cancel, publish. As with Slurm, the task folder and the sources must be on a file
system every Ray node mounts at the same path: the training reads ``task.json`` and
``manifest.csv`` there and writes ``progress.jsonl``, checkpoints, the ONNX model and
``metrics.json`` there, which is how progress reaches the task row.

What a run is:

- a Ray job whose entrypoint is ``<PYTRAIN_RAY_PYTHON> -m pytrain.runners.ray_driver`` (no value
  of the task's in it), with the job's :class:`~pytrain.runners.ray_driver.JobSpec` as data in its
  runtime environment, next to the task's container image or pip list (:func:`runtime_env`). The
  driver places one bundle per node (GPUs, CPUs, memory, accelerator type and custom resources
  from ``PYTRAIN_RAY_*`` and the row's ``options["ray"]``: :func:`job_resources`) and starts the
  training processes (:mod:`pytrain.runners.ray_driver`).
- Its submission id is ``pytrain-task-<id>-<uid>-run-<run id>`` (:func:`submission_id`) and its
  metadata names the task, uid, run and worker, so a restarted worker finds its jobs:
  :meth:`RayRunner.cleanup_orphans` stops those of tasks nobody holds; :meth:`RayRunner.run`
  re-attaches to a live job of the task it was given instead of submitting a second one.
- :func:`pytrain.runners.base.supervise` watches it (:class:`_RayJob` is its RunHandle; stop =
  ``stop_job``); the job's log is appended to ``train.log`` as it grows (an offset kept in the task
  folder, so a re-attached worker does not append it twice); the end is mapped by
  :func:`ray_result`: SUCCEEDED -> succeeded; FAILED with the driver's exit code -> the shared
  mapping (exit 1, out of memory, locked); the driver's
  :data:`~pytrain.runners.ray_driver.NODE_LOST_EXIT_CODE` -> re-queued; STOPPED by someone else ->
  failed, naming it.

docs/adr/0017-ray-runner.md says why one process per GPU in a placement group, not torchrun or
Ray Train's ``TorchTrainer``; docs/operations/ray.md how to run it.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytrain.errors import ConfigurationError, RunnerError
from pytrain.ray_values import RULES
from pytrain.runners.base import (
    OOM_MARKERS, ClusterJob, Outcome, PreparedTask, RunResult, oom_marker, poll_until_ended, run_result, stop_orphan_runs, supervise,
    tail, training_environment,
)
from pytrain.runners.ray_driver import DRIVER_LINE_PREFIX, JOB_SPEC_VARIABLE, NODE_LOST_EXIT_CODE, JobSpec
from pytrain.settings import Settings, get_settings
from pytrain.task_options import ray_overrides
from pytrain.value_rules import memory_bytes

log = logging.getLogger(__name__)

SUBMISSION_PREFIX = "pytrain-task-"
#: The module the job's entrypoint runs.
DRIVER_MODULE = "pytrain.runners.ray_driver"
#: Job states after which a job runs no more.
TERMINAL_STATES = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})
#: How long a stopped job may take to end beyond the runner's grace (seconds): Ray's job supervisor
#: sends SIGTERM, then SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s by default).
GONE_SECONDS = 30.0
#: The file in the task folder that records how much of a job's log ``train.log`` already has.
LOG_OFFSET_FILE = ".ray-log-offset"
#: How often a running job's log is copied into ``train.log`` (seconds): each copy fetches the whole
#: log from the dashboard; progress reaches the row through ``progress.jsonl``, not the log.
LOG_COPY_SECONDS = 5.0
#: Variables of the orchestrator's environment that reach the job (through its runtime
#: environment): PyTrain's and the numeric libraries' settings, never a secret (:func:`training_environment`).
PASSED_PREFIXES = ("PYTRAIN_", "OMP_", "MKL_", "NCCL_", "TORCH_", "PYTHONUNBUFFERED", "CUDA_LAUNCH_BLOCKING")
#: Ray's resource for "a node with this accelerator"; a bundle asks for a sliver of it.
ACCELERATOR_RESOURCE, ACCELERATOR_AMOUNT = "accelerator_type:", 0.001


# -- what the job is (pure) ----------------------------------------------------------------------------
def submission_id(task: PreparedTask) -> str:
    """``pytrain-task-<id>-<uid>-run-<run id>``: one job per run (Ray never reuses a submission id),
    found again by its task and uid (:meth:`RayRunner.find_run`)."""
    run = task.run_id if task.run_id is not None else f"t{time.time_ns()}"
    return f"{_task_prefix(task)}run-{run}"


def _task_prefix(task: PreparedTask) -> str:
    return f"{SUBMISSION_PREFIX}{task.task_id}-{task.spec.uid or '-'}-"


def task_settings(settings: Settings, task: PreparedTask) -> Settings:
    """``settings`` with the task's own Ray resources laid over them (``options["ray"]``,
    :func:`pytrain.task_options.ray_overrides`).

    Raises:
        ConfigurationError: an override that is not a Ray setting or does not fit it.
    """
    return settings.model_copy(update=ray_overrides(task.spec.extra))


def check_ray_values(settings: Settings, subject: str) -> None:
    """Refuse a text Ray setting that does not pass its rule (:data:`pytrain.ray_values.RULES`):
    values that bypassed validation (``model_copy(update=...)``) are caught before any reaches the cluster.

    Raises:
        ConfigurationError: naming the setting, the value and the rule.
    """
    values: list[tuple[str, str, Any]] = [
        (key, key, getattr(settings, f"ray_{key}")) for key in ("address", "memory", "accelerator_type", "container_image", "python")
    ]
    values += [("resources", "resource", name) for name in settings.ray_resources]
    values += [("pip", "pip", item) for item in settings.ray_pip]
    for key, rule, value in values:
        if value is None:
            continue
        try:
            RULES[rule].check(value)
        except ValueError as exc:
            raise ConfigurationError(f"{subject}: Ray setting {key}={value!r} {exc}",
                                     hint=f"fix PYTRAIN_RAY_{key.upper()} or the task's options {{\"ray\": {{\"{key}\": ...}}}}") from None


def job_resources(settings: Settings) -> tuple[dict[str, float], int]:
    """One node's bundle in Ray's resource names, and the training processes per node.

    Example: GPUs 8, CPUs 32, memory ``"200G"``, accelerator ``"H100"``, resources ``{"spot": 1}``
    -> ``({"CPU": 32, "GPU": 8, "memory": 214748364800, "accelerator_type:H100": 0.001, "spot": 1}, 8)``.

    Raises:
        ConfigurationError: a value that fails its rule, or a bundle that asks for nothing (Ray
            refuses an empty bundle: give it CPUs or a resource).
    """
    check_ray_values(settings, "the Ray settings")
    bundle: dict[str, float] = {"CPU": settings.ray_cpus_per_node}
    if settings.ray_gpus_per_node:
        bundle["GPU"] = settings.ray_gpus_per_node
    if settings.ray_memory and memory_bytes(settings.ray_memory):
        bundle["memory"] = memory_bytes(settings.ray_memory)
    if settings.ray_accelerator_type:
        bundle[f"{ACCELERATOR_RESOURCE}{settings.ray_accelerator_type}"] = ACCELERATOR_AMOUNT
    bundle.update(settings.ray_resources)
    if not any(bundle.values()):
        raise ConfigurationError("a Ray node of this task asks for no resource at all", hint="set PYTRAIN_RAY_CPUS_PER_NODE > 0")
    return {name: amount for name, amount in bundle.items() if amount}, max(1, settings.ray_gpus_per_node)


def runtime_env(settings: Settings, spec: JobSpec) -> dict[str, Any]:
    """The job's runtime environment: the spec and the passed variables (:data:`PASSED_PREFIXES`)
    as ``env_vars``, and the container image (``image_uri``) or the pip list.

    Raises:
        ConfigurationError: both a container image and a pip list (Ray runs pip inside neither).
    """
    if settings.ray_container_image and settings.ray_pip:
        raise ConfigurationError("a Ray job takes a container image or a pip list, not both",
                                 hint="install the packages into the image, or drop PYTRAIN_RAY_CONTAINER_IMAGE")
    env = {name: value for name, value in training_environment(settings).items() if name.startswith(PASSED_PREFIXES)}
    env[JOB_SPEC_VARIABLE] = spec.to_json()
    environment: dict[str, Any] = {"env_vars": env}
    if settings.ray_container_image:
        environment["image_uri"] = settings.ray_container_image
    if settings.ray_pip:
        environment["pip"] = list(settings.ray_pip)
    return environment


def job_spec(task: PreparedTask, settings: Settings, *, command: list[str] | None = None, grace_seconds: float = 2.0) -> JobSpec:
    """The :class:`JobSpec` of ``task`` with ``settings`` (the task's overrides laid over them).

    Raises:
        ConfigurationError: ``nodes`` < 1, or a resource value that fails its rule.
    """
    if task.spec.nodes < 1:
        raise ConfigurationError(f"task {task.task_id}: nodes = {task.spec.nodes}", hint="nodes must be at least 1")
    bundle, per_node = job_resources(settings)
    return JobSpec(task_id=task.task_id, task_dir=str(task.task_dir), sources_root=str(task.sources_root), nodes=task.spec.nodes,
                   per_node=per_node, bundle=bundle, command=list(command or []), grace_seconds=grace_seconds)


def entrypoint(settings: Settings) -> str:
    """The job's entrypoint, a shell command with nothing of the task's in it:
    ``<PYTRAIN_RAY_PYTHON> -m pytrain.runners.ray_driver`` (the Python checked by its rule)."""
    return shlex.join([RULES["python"].check(settings.ray_python), "-m", DRIVER_MODULE])


# -- what Ray says about a job --------------------------------------------------------------------------
@dataclass(frozen=True)
class JobInfo:
    """One Ray job as the Jobs API describes it.

    Attributes:
        submission_id: the job's submission id. status: ``PENDING``, ``RUNNING``, ``STOPPED``,
        ``SUCCEEDED`` or ``FAILED``. exit_code: the driver's exit code (``None`` when it never
        ran, or the cluster does not say). message: Ray's message about the end.
        metadata: the job's metadata (``pytrain_task``, ``pytrain_uid``, ``pytrain_run``, ``pytrain_worker``).
    """

    submission_id: str
    status: str
    exit_code: int | None = None
    message: str = ""
    metadata: dict | None = None

    @property
    def ended(self) -> bool:
        """Whether the job runs no more."""
        return self.status in TERMINAL_STATES


def ray_result(info: JobInfo | None, *, stopped_by: Outcome | None, tail_text: str, oom_evidence: str | None,
               timeout_seconds: float | None, details: dict, driver_text: str = "") -> RunResult:
    """The one mapping from a Ray job's end to a :class:`RunResult`.

    ``stopped_by`` wins (this runner stopped it: cancel, shutdown, timeout); then the driver's
    :data:`~pytrain.runners.ray_driver.NODE_LOST_EXIT_CODE` -> ``REQUEUED``; ``STOPPED`` (someone
    else's ``ray job stop``) -> ``FAILED`` naming it; ``SUCCEEDED`` -> ``SUCCEEDED``; ``FAILED`` with
    an exit code -> :func:`run_result` (exit 1, out of memory, locked); ``FAILED`` without one (the
    runtime environment could not be set up) -> ``FAILED`` with Ray's message.

    Args:
        tail_text: the end of the training's output (``train.log`` less the driver's lines).
        driver_text: the driver's own lines (:data:`~pytrain.runners.ray_driver.DRIVER_LINE_PREFIX`):
            they name a lost node.
    """
    job = details.get("job_id", "?")
    subject = f"Ray job {job}"
    details = {**details, "ray_status": None if info is None else info.status}
    if stopped_by is not None:
        return run_result(stopped_by, None if info is None else info.exit_code, subject=subject, tail=tail_text,
                          timeout_seconds=timeout_seconds, details=details)
    if info is None:
        return RunResult(Outcome.FAILED, None, f"{subject} is gone and its end is unknown (was the Ray head restarted?)", tail_text, details)
    if info.exit_code == NODE_LOST_EXIT_CODE:
        lost = next((line for line in reversed(driver_text.splitlines()) if "was lost" in line), "a node was lost")
        return RunResult(Outcome.REQUEUED, info.exit_code, f"{subject} lost a node: {lost.removeprefix(DRIVER_LINE_PREFIX + ': ')}",
                         tail_text, details)
    if info.status == "STOPPED":
        return RunResult(Outcome.FAILED, info.exit_code, f"{subject} was stopped outside PyTrain (ray job stop); submit the task again "
                         "to retry", tail_text, details)
    if info.status == "SUCCEEDED":
        return run_result(None, 0, details=details)
    if info.exit_code is None:
        return RunResult(Outcome.FAILED, None, f"{subject} failed before its driver ran: {info.message.strip()[-500:]}", tail_text, details)
    return run_result(None, info.exit_code, subject=subject, tail=tail_text, oom_evidence=oom_evidence, details=details)


# -- talking to Ray ---------------------------------------------------------------------------------------
class RayCluster:
    """The Jobs API calls the runner uses (``ray.job_submission.JobSubmissionClient``), each translated.

    Args:
        address: the Jobs API's URL.

    Raises (every method): RunnerError when the cluster does not answer or refuses the call.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._client = None

    @property
    def client(self):
        if self._client is None:
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError as exc:
                raise ConfigurationError("the ray runner needs Ray's client", hint="pip install 'pytrain[ray]'") from exc
            self._client = self._call("connect to", lambda: JobSubmissionClient(self.address))
        return self._client

    def _call(self, what: str, call):
        try:
            return call()
        except (ConfigurationError, RunnerError):
            raise
        except Exception as exc:  # noqa: BLE001 - requests' and Ray's errors alike: the cluster's answer
            raise RunnerError(f"cannot {what} the Ray cluster at {self.address}: {type(exc).__name__}: {exc}",
                              hint="is the Ray head up, and PYTRAIN_RAY_ADDRESS its dashboard's address? (ray status)") from exc

    def submit(self, submission: str, entry: str, environment: dict, metadata: dict[str, str]) -> None:
        """Submit a job (its driver takes no resources of its own: it only waits)."""
        self._call("submit a job to", lambda: self.client.submit_job(
            entrypoint=entry, submission_id=submission, runtime_env=environment, metadata=metadata, entrypoint_num_cpus=0))

    def job(self, submission: str) -> JobInfo | None:
        """The job, or ``None`` when the cluster does not know it."""
        try:
            details = self.client.get_job_info(submission)
        except RuntimeError as exc:  # the SDK's "Request failed with status code 404"
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise RunnerError(f"cannot read Ray job {submission}: {exc}", hint="is the Ray head up? (ray status)") from exc
        except Exception as exc:  # noqa: BLE001
            raise RunnerError(f"cannot read Ray job {submission}: {type(exc).__name__}: {exc}", hint="is the Ray head up?") from exc
        return _info(details)

    def jobs(self) -> list[JobInfo]:
        """Every job PyTrain submitted that the cluster knows (live or ended)."""
        return [_info(d) for d in self._call("list the jobs of", self.client.list_jobs)
                if (d.submission_id or "").startswith(SUBMISSION_PREFIX)]

    def logs(self, submission: str) -> str:
        """The job's whole log so far."""
        return self._call("read a job's log from", lambda: self.client.get_job_logs(submission))

    def stop(self, submission: str) -> None:
        """Ask Ray to stop the job (idempotent: an ended job is left as it is)."""
        self._call("stop a job on", lambda: self.client.stop_job(submission))

    def wait_ended(self, submissions: set[str], timeout: float) -> set[str]:
        """Wait until every job of ``submissions`` has ended, at most ``timeout`` seconds; those still live."""
        deadline = time.monotonic() + timeout
        while True:
            left = {s for s in submissions if (info := self.job(s)) is not None and not info.ended}
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)


def _info(details) -> JobInfo:
    return JobInfo(submission_id=details.submission_id or details.job_id, status=str(details.status),
                   exit_code=getattr(details, "driver_exit_code", None), message=details.message or "", metadata=dict(details.metadata or {}))


class _RayJob(ClusterJob):
    """A submitted job as :func:`pytrain.runners.base.supervise` sees it (a RunHandle); it also
    appends the job's log to ``train.log`` as it grows."""

    def __init__(self, cluster: RayCluster, submission: str, task_dir: Path, log_path: Path, poll_seconds: float) -> None:
        super().__init__(f"Ray job {submission}", poll_seconds)
        self.cluster = cluster
        self.submission = submission
        self.log_path = log_path
        self.offset_path = task_dir / LOG_OFFSET_FILE
        self.info: JobInfo | None = None
        self._copied_at: float | None = None

    def copy_log(self) -> None:
        """Append what the job logged since the last copy to ``train.log``."""
        try:
            text = self.cluster.logs(self.submission)
        except RunnerError as exc:
            log.warning("%s: cannot read its log (%s)", self.subject, exc)
            return
        self._copied_at = time.monotonic()
        done = self._offset()
        if len(text) <= done:
            return
        with open(self.log_path, "a", encoding="utf-8") as out:
            out.write(text[done:])
        partial = self.offset_path.with_suffix(".tmp")  # whole or not at all: a torn offset would append the log again
        partial.write_text(f"{self.submission} {len(text)}\n", encoding="utf-8")
        os.replace(partial, self.offset_path)

    def _offset(self) -> int:
        try:
            job, chars = self.offset_path.read_text(encoding="utf-8").split()
            return int(chars) if job == self.submission else 0
        except (FileNotFoundError, ValueError):
            return 0

    def _read(self) -> JobInfo | None:
        return self.cluster.job(self.submission)

    def _exit_code(self, info: JobInfo) -> int:
        return 0 if info.status == "SUCCEEDED" else (info.exit_code if info.exit_code is not None else 1)

    def _look_and_copy(self) -> int | None:
        """The job's exit code (``None`` while it runs), its log copied at the end and every
        :data:`LOG_COPY_SECONDS` meanwhile."""
        code = self._look()
        if code is not None or self._copied_at is None or time.monotonic() - self._copied_at >= LOG_COPY_SECONDS:
            self.copy_log()
        return code

    def wait(self, seconds: float) -> int | None:
        return poll_until_ended(self._look_and_copy, seconds, self.poll_seconds)

    def stop(self, grace_seconds: float) -> None:
        """``stop_job``, then wait until the job has ended (Ray's own SIGTERM -> SIGKILL, plus ``grace_seconds``)."""
        self.cluster.stop(self.submission)
        if self.cluster.wait_ended({self.submission}, grace_seconds + GONE_SECONDS):
            log.warning("%s: still running %.0f s after stop_job", self.subject, grace_seconds + GONE_SECONDS)
        self.copy_log()

    def output_tail(self) -> str:
        """The end of ``train.log`` without the driver's own lines: the training's last words."""
        lines = [line for line in tail(self.log_path, lines=60).splitlines() if not line.startswith(DRIVER_LINE_PREFIX)]
        return "\n".join(lines[-20:])

    def driver_lines(self) -> str:
        """The driver's own lines at the end of ``train.log`` (a lost node is named there)."""
        return "\n".join(line for line in tail(self.log_path, lines=60).splitlines() if line.startswith(DRIVER_LINE_PREFIX))

    def oom_evidence(self, exit_code: int | None) -> str | None:
        marker = oom_marker(tail(self.log_path, lines=60), OOM_MARKERS)
        return f"the job's output says {marker!r}" if marker else None


class RayRunner:
    """Runs each task as one Ray job (see the module docstring).

    Args:
        settings: PyTrain settings (default: the process settings): ``ray_*``, ``worker_id``.
        poll_seconds: how often the job's state and log are read while it runs (seconds).
        grace_seconds: SIGTERM -> SIGKILL of the training processes when the job is stopped.
        cluster: the Jobs API calls (tests may pass their own).
        command: the program the nodes run instead of PyTrain's training (tests); it gets
            ``--task-dir DIR --sources-root ROOT`` appended.

    Raises:
        ConfigurationError: ``PYTRAIN_RAY_ADDRESS`` is unset, or a Ray setting fails its rule.
    """

    name = "ray"

    def __init__(self, settings: Settings | None = None, *, poll_seconds: float = 1.0, grace_seconds: float = 2.0,
                 cluster: RayCluster | None = None, command: list[str] | None = None) -> None:
        self.settings = settings or get_settings()
        if not self.settings.ray_address and cluster is None:
            raise ConfigurationError("the ray runner needs the cluster's address", hint="set PYTRAIN_RAY_ADDRESS, e.g. http://ray-head:8265")
        check_ray_values(self.settings, "the settings")  # a bad value is refused at start-up, not per task
        self.worker_id = self.settings.worker_id or "pytrain"
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.cluster = cluster or RayCluster(self.settings.ray_address)
        self.command = list(command) if command else None

    def find_run(self, task: PreparedTask) -> str | None:
        """The submission id of a live job of ``task`` (same task id and uid) that :meth:`run` would re-attach to."""
        prefix = _task_prefix(task)
        return next((job.submission_id for job in self.cluster.jobs() if job.submission_id.startswith(prefix) and not job.ended), None)

    def _submit(self, task: PreparedTask) -> str:
        settings = task_settings(self.settings, task)
        spec = job_spec(task, settings, command=self.command, grace_seconds=self.grace_seconds)
        submission = submission_id(task)
        metadata = {"pytrain_task": str(task.task_id), "pytrain_uid": task.spec.uid or "-", "pytrain_worker": self.worker_id,
                    "pytrain_run": str(task.run_id)}
        self.cluster.submit(submission, entrypoint(settings), runtime_env(settings, spec), metadata)
        log.info("task %s: submitted Ray job %s (%s node(s) x %s)", task.task_id, submission, spec.nodes, spec.bundle)
        return submission

    def run(self, task: PreparedTask, cancel: threading.Event, stop: threading.Event | None = None) -> RunResult:
        """Submit ``task`` as a Ray job (or re-attach to its live job) and block until it ends.

        Returns:
            See :func:`ray_result`. ``details``: ``job_id``, ``log``, ``seconds``, ``ray_status``, ``reattached``.

        Raises:
            RunnerError: the cluster does not answer, or refused the job.
            ConfigurationError: the task's nodes or a Ray value is invalid.
        """
        task.task_dir.mkdir(parents=True, exist_ok=True)
        submission = self.find_run(task)
        reattached = submission is not None
        if reattached:
            log.info("task %s: re-attaching to Ray job %s", task.task_id, submission)
        else:
            submission = self._submit(task)
        handle = _RayJob(self.cluster, submission, task.task_dir, task.log_path, self.poll_seconds)
        details = {"job_id": submission, "log": str(task.log_path), "reattached": reattached}
        try:
            result = supervise(handle, task, cancel, stop, timeout_seconds=task.timeout_seconds, grace_seconds=self.grace_seconds,
                               poll_seconds=self.poll_seconds, details=details)
        finally:
            if not handle.gone and (handle.info is None or not handle.info.ended):
                handle.stop(self.grace_seconds)  # an exception in this thread: leave nothing running
        stopped_by = result.outcome if result.outcome in (Outcome.CANCELLED, Outcome.INTERRUPTED, Outcome.TIMED_OUT) else None
        info = None if handle.gone else handle.info
        return ray_result(info, stopped_by=stopped_by, tail_text=handle.output_tail(), driver_text=handle.driver_lines(),
                          oom_evidence=handle.oom_evidence(result.exit_code), timeout_seconds=task.timeout_seconds,
                          details=result.details)

    def cleanup_orphans(self, active_task_ids: set[int]) -> set[int]:
        """Stop this worker's live jobs of tasks not in ``active_task_ids`` (see
        :meth:`pytrain.runners.slurm.SlurmRunner.cleanup_orphans`: the same rule).

        Returns:
            The ids of the tasks whose jobs were stopped.
        """
        mine = {}  # submission id -> task id
        for job in self.cluster.jobs():
            meta = job.metadata or {}
            if not job.ended and meta.get("pytrain_worker") == self.worker_id and meta.get("pytrain_task", "").isdigit():
                mine[job.submission_id] = int(meta["pytrain_task"])
        return stop_orphan_runs(mine, active_task_ids, stop=self.cluster.stop, wait_gone=self.cluster.wait_ended,
                                gone_seconds=GONE_SECONDS, what="Ray job")
