"""The ``slurm`` runner: one Slurm batch job per task, on one node or several.

The orchestrator runs wherever ``sbatch`` works (a login node, any host of the cluster) and keeps
doing what it does with the other runners: claim, lease, heartbeat, cancel, publish. The task
folder and the sources must be on a file system every node sees at the same path: the job reads
``task.json`` and ``manifest.csv`` from it and writes ``progress.jsonl``, checkpoints, the ONNX
model and ``metrics.json`` into it, which is how progress reaches the task row.

What a run is:

- :func:`render_sbatch` writes ``<task folder>/slurm.sbatch`` (a user can read and re-submit it
  by hand): resources from the settings (``PYTRAIN_SLURM_*``) and the task's ``nodes`` column, the
  time limit from ``PYTRAIN_TASK_TIMEOUT_SECONDS``, output appended to ``train.log``. The job
  ``srun``\\ s one ``torchrun`` per node (c10d rendezvous on the first node of the allocation, a
  port derived from the job id; ``--nnodes`` from the allocation, ``--nproc-per-node`` = GPUs per
  node); one node with one GPU (or none) runs plain ``python -m pytrain.training``. With
  ``PYTRAIN_SLURM_CONTAINER_IMAGE`` the steps run in that image through pyxis.
- The job's name is ``pytrain-task-<id>`` and its comment ``pytrain:task=<id>:uid=<uid>:worker=<worker id>``
  (:func:`job_comment`), so a restarted worker finds its jobs: :meth:`SlurmRunner.cleanup_orphans`
  cancels those of tasks nobody holds; :meth:`SlurmRunner.run` re-attaches to a still-live job of
  the task it was given instead of submitting a second one.
- :func:`pytrain.runners.base.supervise` watches it (:class:`_SlurmJob` is its RunHandle; stop =
  ``scancel``); the end is read from ``sacct`` when the cluster has accounting, else from
  ``scontrol show job`` (:func:`parse_sacct`, :func:`parse_scontrol_job`) and mapped by
  :func:`slurm_result`: COMPLETED -> succeeded; FAILED -> failed with the exit code (out of memory
  when slurmstepd says the step exceeded its memory); OUT_OF_MEMORY; TIMEOUT; CANCELLED by this
  runner (cancel, shutdown) vs by an operator (failed, naming it); NODE_FAIL, PREEMPTED,
  BOOT_FAIL -> re-queued.

The Slurm calls are the command-line tools (``sbatch --parsable``, ``squeue``, ``scontrol -o``,
``sacct -P``, ``scancel``): docs/adr/0009-slurm-runner.md says why not submitit.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pytrain.errors import ConfigurationError, RunnerError
from pytrain.runners.base import (
    OOM_MARKERS, TRAINING_MODULE, ClusterJob, Outcome, PreparedTask, RunResult, oom_marker, run_result, stop_orphan_runs, supervise, tail,
    training_environment,
)
from pytrain.settings import Settings, get_settings
from pytrain.slurm_values import RULES, SBATCH_LINE_PATTERN, SCRIPT_PATH_PATTERN, parse_extra_sbatch, problem
from pytrain.task_columns import MODEL_NAME_PATTERN
from pytrain.task_options import slurm_overrides

log = logging.getLogger(__name__)

SBATCH_FILE = "slurm.sbatch"
JOB_NAME_PREFIX = "pytrain-task-"
#: Job states after which a job runs no more (``squeue``/``scontrol``/``sacct`` spell them alike).
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})
#: States of a job on its way out: ended, or still tearing its steps down. Right after ``scancel``
#: squeue shows a running job ``COMPLETING`` for as long as its steps take to die (~8 s here for a
#: program that ignores SIGTERM): a job in one of these states is never re-attached to.
ENDING_STATES = TERMINAL_STATES | {"COMPLETING", "STAGE_OUT"}
#: Ends that are the cluster's doing, not the training's: the task goes back to the queue.
REQUEUE_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"})
#: What slurmstepd writes into the job's output when it kills a step over its ``--mem``.
_SLURM_OOM_MARKERS = ("Exceeded job memory limit", "exceeded memory limit", "oom-kill event", "OUT_OF_MEMORY")
#: Lines Slurm itself writes into the job's output (left out of the task row's stderr tail).
_SLURM_LINE_PREFIXES = ("srun: ", "slurmstepd", "=== pytrain slurm job")
#: How long a cancelled job may take to leave squeue beyond the runner's grace (seconds): KillWait
#: plus the steps' teardown (~8 s here for a program that ignores SIGTERM).
GONE_SECONDS = 30.0
#: Ports of the c10d rendezvous: ``RDZV_PORT_BASE + job id % RDZV_PORT_SPAN``.
RDZV_PORT_BASE, RDZV_PORT_SPAN = 20000, 20000


# -- what Slurm says about a job (pure parsers) ----------------------------------------------------
@dataclass(frozen=True)
class JobInfo:
    """One Slurm job as ``scontrol show job`` or ``sacct`` describes it.

    Attributes:
        job_id: the job id (text: ``"123"``; array jobs are not used).
        state: the base state (``RUNNING``, ``COMPLETED``, ``CANCELLED``, ...).
        exit_code: the batch script's exit code (the part before ``:`` in ``ExitCode=1:0``).
        signal: the signal that ended it (the part after ``:``), 0 for none.
        reason: ``Reason=`` (``NonZeroExitCode``, ``TimeLimit``, ``NodeDown``) or ``""``.
        cancelled_by: the uid in sacct's ``CANCELLED by 1000``; ``None`` when unknown.
        name: the job name. comment: the job comment (scontrol only). nodes: ``NodeList``.
    """

    job_id: str
    state: str
    exit_code: int = 0
    signal: int = 0
    reason: str = ""
    cancelled_by: int | None = None
    name: str = ""
    comment: str = ""
    nodes: str = ""

    @property
    def ended(self) -> bool:
        """Whether the job runs no more."""
        return self.state in TERMINAL_STATES

    @property
    def ending(self) -> bool:
        """Whether the job has ended or is ending (cancelled, its steps being torn down)."""
        return self.state in ENDING_STATES


def _exit_code(text: str) -> tuple[int, int]:
    code, _, sig = (text or "0:0").partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return 0, 0


def _state(text: str) -> tuple[str, int | None]:
    """``"CANCELLED by 1000"`` -> ``("CANCELLED", 1000)``; ``"FAILED"`` -> ``("FAILED", None)``."""
    match = re.match(r"([A-Z_]+)(?:\+)?(?: by (\d+))?", text.strip())
    if not match:
        return text.strip(), None
    return match.group(1), int(match.group(2)) if match.group(2) else None


_KEY_VALUE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9/:_]*)=(\S*)")


def parse_scontrol_job(text: str) -> JobInfo | None:
    """Parse ``scontrol -o show job ID`` (one line of ``Key=Value`` pairs per job).

    Returns:
        The first job in ``text``, or ``None`` when there is none (``Invalid job id specified``:
        the job ended longer than ``MinJobAge`` ago, or never existed).
    """
    for line in text.splitlines():
        fields = dict(_KEY_VALUE.findall(line))
        if "JobId" not in fields or "JobState" not in fields:
            continue
        code, sig = _exit_code(fields.get("ExitCode", "0:0"))
        comment = fields.get("Comment", "")
        return JobInfo(
            job_id=fields["JobId"], state=_state(fields["JobState"])[0], exit_code=code, signal=sig,
            reason="" if fields.get("Reason") in (None, "None", "(null)") else fields["Reason"],
            name=fields.get("JobName", ""), comment="" if comment == "(null)" else comment,
            nodes="" if fields.get("NodeList") in (None, "(null)") else fields["NodeList"],
        )
    return None


#: The columns :func:`parse_sacct` reads, in the order it reads them.
SACCT_FORMAT = "JobID,JobName,State,ExitCode,NodeList"


def parse_sacct(text: str, job_id: str) -> JobInfo | None:
    """Parse ``sacct -X -P -n -j ID -o JobID,JobName,State,ExitCode,NodeList``.

    Args:
        text: sacct's output: ``|``-separated lines in :data:`SACCT_FORMAT` order, no header.
        job_id: the job to pick (its allocation line; steps are ``ID.batch``, ``ID.0``).

    Returns:
        The job, or ``None`` when sacct does not list it (yet).
    """
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or parts[0] != job_id:
            continue
        parts += [""] * (5 - len(parts))
        state, by = _state(parts[2])
        code, sig = _exit_code(parts[3])
        return JobInfo(job_id=job_id, state=state, exit_code=code, signal=sig, cancelled_by=by, name=parts[1],
                       nodes="" if parts[4] in ("None assigned", "(null)") else parts[4])
    return None


def _worker_tag(worker_id: str) -> str:
    """The worker id as a job comment carries it (no spaces or colons)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", worker_id)


def job_comment(task_id: int, uid: str, worker_id: str) -> str:
    """The job comment that names a run's task and worker: ``pytrain:task=<id>:uid=<uid>:worker=<worker id>``."""
    return f"pytrain:task={task_id}:uid={uid or '-'}:worker={_worker_tag(worker_id)}"


def parse_job_comment(comment: str) -> dict[str, str] | None:
    """``{"task", "uid", "worker"}`` from a :func:`job_comment`; ``None`` for any other comment."""
    match = re.fullmatch(r"pytrain:task=(\d+):uid=([^:]*):worker=(.*)", comment.strip())
    return None if match is None else {"task": match.group(1), "uid": match.group(2), "worker": match.group(3)}


def _uid_of(job: JobInfo) -> str | None:
    """The task uid in a job's :func:`job_comment`; ``None`` for a job PyTrain did not submit."""
    meta = parse_job_comment(job.comment)
    return None if meta is None else meta["uid"]


def slurm_result(
    info: JobInfo | None, *, job_id: str, stopped_by: Outcome | None, tail_text: str, oom_evidence: str | None,
    timeout_seconds: float | None, details: dict,
) -> RunResult:
    """The one mapping from a Slurm job's end to a :class:`RunResult`.

    Args:
        info: the ended job (``None``: Slurm no longer knows it and there is no accounting).
        job_id: its id, for messages.
        stopped_by: ``CANCELLED`` / ``INTERRUPTED`` / ``TIMED_OUT`` when this runner cancelled it.
        tail_text: the end of ``train.log``.
        oom_evidence: what shows the job ran out of memory, or ``None``.
        timeout_seconds: the task's time limit (seconds), for ``TIMEOUT``.
        details: the runner's facts (``job_id``, ``sbatch``, ``log``, ``seconds``).

    Returns:
        ``stopped_by`` wins (this runner's own cancel); then ``TIMEOUT`` -> ``TIMED_OUT``;
        ``NODE_FAIL`` / ``PREEMPTED`` / ``BOOT_FAIL`` -> ``REQUEUED``; ``CANCELLED`` -> ``FAILED``
        "cancelled by an operator"; ``COMPLETED`` -> ``SUCCEEDED``; ``OUT_OF_MEMORY`` or the step's
        memory kill -> ``OUT_OF_MEMORY``; anything else -> ``FAILED`` with the exit code.
    """
    details = {**details, "slurm_state": None if info is None else info.state}
    if stopped_by is not None:
        return run_result(stopped_by, None if info is None else info.exit_code, subject=f"Slurm job {job_id}",
                          tail=tail_text, timeout_seconds=timeout_seconds, details=details)
    if info is None:
        return RunResult(Outcome.FAILED, None, f"Slurm job {job_id} is gone and its end is unknown "
                         "(no accounting, and it ended longer than MinJobAge ago)", tail_text, details)
    if info.state == "TIMEOUT":
        limit = f"{timeout_seconds:g} s, rounded up to whole minutes" if timeout_seconds else "its time limit"
        return RunResult(Outcome.TIMED_OUT, info.exit_code,
                         f"timed out: Slurm job {job_id} reached its time limit ({limit}; PYTRAIN_TASK_TIMEOUT_SECONDS)",
                         tail_text, details)
    if info.state in REQUEUE_STATES:
        where = f" on {info.nodes}" if info.nodes else ""
        why = f", {info.reason}" if info.reason else ""
        return RunResult(Outcome.REQUEUED, info.exit_code, f"Slurm job {job_id} ended {info.state}{where}{why}",
                         tail_text, details)
    if info.state == "CANCELLED":
        by = f" (uid {info.cancelled_by})" if info.cancelled_by is not None else ""
        return RunResult(Outcome.FAILED, info.exit_code,
                         f"Slurm job {job_id} was cancelled by an operator{by} (scancel outside PyTrain); "
                         "submit the task again to retry", tail_text, details)
    if info.state == "COMPLETED" and info.exit_code == 0:
        return run_result(None, 0, details=details)
    code = info.exit_code if info.exit_code else (128 + info.signal if info.signal else 1)
    if info.state == "OUT_OF_MEMORY" and not oom_evidence:
        oom_evidence = f"Slurm job state {info.state}"
    return run_result(None, code, subject=f"Slurm job {job_id}", tail=tail_text, oom_evidence=oom_evidence, details=details)


# -- the batch script --------------------------------------------------------------------------------
def time_limit_minutes(timeout_seconds: float | None) -> int | None:
    """``--time`` in whole minutes (Slurm's unit), rounded up; ``None`` for no limit."""
    return None if timeout_seconds is None else max(1, math.ceil(timeout_seconds / 60))


def check_slurm_values(settings: Settings, subject: str) -> None:
    """Refuse a text Slurm setting that does not pass its rule (:mod:`pytrain.slurm_values`).

    Settings read from the environment were checked by their types already; this catches values
    that bypassed validation (``model_copy(update=...)``) before any reaches a script.

    Args:
        settings: the settings, a task's overrides laid over them (:func:`task_settings`).
        subject: who holds them, for the message (``"task 12"``, ``"the settings"``).

    Raises:
        ConfigurationError: naming the setting, the value and the rule.
    """
    for key in (*RULES, "extra_sbatch"):
        value = getattr(settings, f"slurm_{key}")
        why = None if value is None else problem(key, value)
        if why:
            raise ConfigurationError(f"{subject}: Slurm setting {key}={value!r} {why}",
                                     hint=f"fix PYTRAIN_SLURM_{key.upper()} or the task's options {{\"slurm\": {{\"{key}\": ...}}}}")


def task_settings(settings: Settings, task: PreparedTask) -> Settings:
    """``settings`` with the task's own Slurm resources laid over them: the row's
    ``options["slurm"]`` (e.g. ``{"partition": "h100", "gpus_per_node": 8}``,
    :func:`pytrain.task_options.slurm_overrides`).

    Raises:
        ConfigurationError: an override that is not a Slurm setting or does not fit it.
    """
    return settings.model_copy(update=slurm_overrides(task.spec.extra))


def _sbatch_options(task: PreparedTask, settings: Settings, worker_id: str) -> list[str]:
    """The ``#SBATCH`` options of ``task``'s script, each checked against :data:`SBATCH_LINE_PATTERN`.

    Raises:
        ConfigurationError: a Slurm setting that fails its rule, or an option that would not be one
            ``#SBATCH`` word (defence in depth: every value was checked before).
    """
    check_slurm_values(settings, f"task {task.task_id}")
    options = [
        f"--job-name={JOB_NAME_PREFIX}{task.task_id}",
        f"--comment={job_comment(task.task_id, task.spec.uid, worker_id)}",
        f"--nodes={task.spec.nodes}",
        "--ntasks-per-node=1",
    ]
    named = (("gpus-per-node", settings.slurm_gpus_per_node), ("cpus-per-task", settings.slurm_cpus_per_task),
             ("mem", settings.slurm_mem), ("partition", settings.slurm_partition), ("account", settings.slurm_account),
             ("qos", settings.slurm_qos), ("time", time_limit_minutes(task.timeout_seconds)))
    options += [f"--{flag}={value}" for flag, value in named if value]
    options += [
        f"--chdir={task.task_dir}", f"--output={task.log_path}", "--open-mode=append",
        "--no-requeue",  # after a node failure the orchestrator re-queues the task, not Slurm
        *parse_extra_sbatch(settings.slurm_extra_sbatch),
    ]
    for option in options:  # defence in depth: never write a line sbatch or bash would read as more than one option
        if not re.fullmatch(SBATCH_LINE_PATTERN, option):
            raise ConfigurationError(f"task {task.task_id}: refusing to write {'#SBATCH ' + option!r} into {SBATCH_FILE}",
                                     hint=f"an #SBATCH option must match {SBATCH_LINE_PATTERN}")
    return options


def _check_names_and_paths(task: PreparedTask, settings: Settings) -> None:
    """Refuse a model name or a path the script would carry that fails its pattern.

    The model name goes into a comment line; the paths into ``#SBATCH`` lines, pyxis's mount
    list and a here-document (quoted, but a newline would still end it).

    Raises:
        ConfigurationError: naming the value and the pattern (:data:`SCRIPT_PATH_PATTERN`).
    """
    if not re.fullmatch(MODEL_NAME_PATTERN, task.spec.model_name):
        raise ConfigurationError(f"task {task.task_id}: model name {task.spec.model_name!r} does not match {MODEL_NAME_PATTERN}")
    paths = {"task folder": task.task_dir, "sources root": task.sources_root}
    if settings.slurm_container_image:
        paths["weights folder"] = settings.torch_home  # mounted into the container
    for what, path in paths.items():
        if not re.fullmatch(SCRIPT_PATH_PATTERN, str(path)):
            raise ConfigurationError(f"task {task.task_id}: the {what} {str(path)!r} cannot be written into {SBATCH_FILE}",
                                     hint=f"use an absolute path matching {SCRIPT_PATH_PATTERN} (PYTRAIN_MODEL_TASKS_DIR, "
                                     "PYTRAIN_SOURCES_DIR, PYTRAIN_TORCH_HOME)")


def render_sbatch(task: PreparedTask, settings: Settings, *, worker_id: str, command: Sequence[str] | None = None) -> str:
    """The batch script of ``task`` (written to ``<task folder>/slurm.sbatch``).

    Args:
        task: the prepared task; ``task.spec.nodes`` nodes, ``task.timeout_seconds`` the time limit.
        settings: ``slurm_*`` resources, container image and Python.
        worker_id: goes into the job comment (:func:`job_comment`).
        command: the entrypoint on the nodes; default ``[<python>, "-m", "pytrain.training"]``
            (plain) or ``-m pytrain.training`` under torchrun. Tests pass a small program here; it
            gets ``--task-dir DIR --sources-root ROOT`` appended and runs plain, one per node.

    Returns:
        A bash script with ``#SBATCH`` lines. Everything that depends on the allocation (node
        names, rendezvous address and port) is computed by the script when the job starts.

    Raises:
        ConfigurationError: ``nodes`` < 1, a model name or Slurm setting that fails its pattern
            (:mod:`pytrain.slurm_values`; the value is refused, never quoted around), or an
            ``#SBATCH`` option that is not one word (:func:`_sbatch_options`).
    """
    nodes = task.spec.nodes
    if nodes < 1:
        raise ConfigurationError(f"task {task.task_id}: nodes = {nodes}", hint="nodes must be at least 1")
    _check_names_and_paths(task, settings)
    lines = _script_header(task, settings, _sbatch_options(task, settings, worker_id))
    srun, python = _srun_and_python(task, settings)
    arguments = ["--task-dir", str(task.task_dir), "--sources-root", str(task.sources_root)]
    training = ["-m", TRAINING_MODULE, *arguments]
    if command is not None:
        lines.append(f"exec {shlex.join(srun)} {shlex.join([*command, *arguments])}")
    elif nodes == 1 and _per_node(settings) == 1:
        lines.append(f"exec {shlex.join(srun)} {shlex.join([python, *training])}")
    else:
        lines += _torchrun_lines(srun, python, _per_node(settings), training)
    return "\n".join(lines) + "\n"


def _per_node(settings: Settings) -> int:
    """Training processes per node: one per GPU, or one on the CPU."""
    return max(1, settings.slurm_gpus_per_node)


def _script_header(task: PreparedTask, settings: Settings, options: list[str]) -> list[str]:
    """The script's first lines: the shebang, what it runs, its ``#SBATCH`` ``options``, the shell settings."""
    gpus = settings.slurm_gpus_per_node
    return [
        "#!/bin/bash",
        f"# Generated by PyTrain's slurm runner for task {task.task_id} ({task.spec.model_name}): "
        f"{task.spec.nodes} node(s) x {_per_node(settings)} {'GPU(s)' if gpus else 'process(es)'}.",
        "# Re-submit by hand with: sbatch slurm.sbatch",
        *(f"#SBATCH {option}" for option in options),
        "set -euo pipefail",
        "export PYTHONUNBUFFERED=1",
        "# srun is exec'd: scancel's signals reach it directly and it takes the steps down with it (a",
        "# shell in between would die first and leave the steps to time out talking to a dead srun).",
        'echo "=== pytrain slurm job $SLURM_JOB_ID on $SLURM_JOB_NODELIST"',
    ]


def _srun_and_python(task: PreparedTask, settings: Settings) -> tuple[list[str], str]:
    """``srun``'s command line (in ``slurm_container_image`` through pyxis, with the task folder,
    the sources and the weights mounted) and the Python that trains on the nodes."""
    srun = ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
    if not settings.slurm_container_image:
        return srun, settings.slurm_python or sys.executable
    task_dir, sources = str(task.task_dir), str(task.sources_root)
    srun += [
        f"--container-image={settings.slurm_container_image}",
        f"--container-mounts={sources}:{sources}:ro,{task_dir}:{task_dir}"
        + (f",{settings.torch_home}:{settings.torch_home}:ro" if settings.torch_home.is_dir() else ""),  # the weights
        f"--container-workdir={task_dir}",
        "--no-container-mount-home",
    ]
    return srun, settings.slurm_python or "python"


def _torchrun_lines(srun: list[str], python: str, per_node: int, training: list[str]) -> list[str]:
    """The script's end for several processes: one torchrun per node, meeting at a c10d rendezvous
    on the allocation's first node (computed when the job starts)."""
    torchrun = [
        python, "-m", "torch.distributed.run", "--nnodes=$SLURM_JOB_NUM_NODES", f"--nproc-per-node={per_node}",
        "--rdzv-backend=c10d", "--rdzv-id=$SLURM_JOB_ID", "--rdzv-endpoint=$PYTRAIN_RDZV_ENDPOINT",
        "--rdzv-conf=is_host=$is_host", *training,
    ]
    # The expansions ($SLURM_*, $is_host) must reach the node's shell unquoted; the rest is quoted.
    node_command = " ".join(part if part.startswith("--") and "$" in part else shlex.quote(part) for part in torchrun)
    return [
        "# The rendezvous: the first node of the allocation, at the address Slurm knows it by, on a port",
        "# derived from the job id (two jobs on one node do not collide).",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'head_addr=$(scontrol show node "$head_node" | grep -o "NodeAddr=[^ ]*" | cut -d= -f2)',
        f"export PYTRAIN_RDZV_ENDPOINT=\"${{head_addr:-$head_node}}:$(( {RDZV_PORT_BASE} + SLURM_JOB_ID % {RDZV_PORT_SPAN} ))\"",
        "# One torchrun per node; the first node hosts the rendezvous store.",
        "read -r -d '' node_command <<'NODE' || true",
        'is_host=false; [ "$SLURM_NODEID" = 0 ] && is_host=true',
        f"exec {node_command}",
        "NODE",
        f'exec {shlex.join(srun)} bash -c "$node_command"',
    ]


# -- talking to Slurm -------------------------------------------------------------------------------
def _slurm(argv: list[str], *, timeout: float = 30.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a Slurm command; ``RunnerError`` when it is missing or hangs (the controller is down)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise RunnerError(f"{argv[0]} not found: the slurm runner needs Slurm's client tools",
                          hint="run the orchestrator on a login node (apt-get install slurm-client), or use another PYTRAIN_RUNNER") from exc
    except subprocess.TimeoutExpired as exc:
        raise RunnerError(f"{' '.join(argv[:3])} did not answer within {timeout:g} s", hint="is slurmctld up? (scontrol ping)") from exc


class SlurmCluster:
    """The Slurm commands the runner uses, each parsed; one instance per runner.

    Raises (every method): RunnerError when a command is missing or does not answer.
    """

    def __init__(self) -> None:
        self._accounting: bool | None = None  # detected at the first sacct call

    def submit(self, script: Path, env: dict[str, str]) -> str:
        """``sbatch --parsable script``; the job id.

        Raises:
            RunnerError: sbatch refused the job (its stderr is the message: a bad partition, too
                many nodes, an unknown account).
        """
        done = _slurm(["sbatch", "--parsable", str(script)], env=env)
        if done.returncode != 0:
            raise RunnerError(f"sbatch refused {script}: {done.stderr.strip() or done.stdout.strip()}",
                              hint="check the PYTRAIN_SLURM_* settings and the task's nodes", exit_code=done.returncode,
                              stderr_tail=done.stderr)
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> JobInfo | None:
        """The job as ``scontrol show job`` sees it; ``None`` once Slurm has forgotten it.

        Raises:
            RunnerError: scontrol failed for another reason (the controller is restarting).
        """
        done = _slurm(["scontrol", "-o", "show", "job", job_id])
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            raise RunnerError(f"scontrol show job {job_id} failed: {done.stderr.strip()}", hint="is slurmctld up? (scontrol ping)")
        return parse_scontrol_job(done.stdout) if done.returncode == 0 else None

    def final(self, job_id: str) -> JobInfo | None:
        """How an ended job ended: from ``sacct`` when the cluster keeps accounting, else ``scontrol``.

        sacct knows who cancelled a job and keeps jobs past ``MinJobAge``; without accounting
        (``Slurm accounting storage is disabled``) ``scontrol show job`` is all there is.
        """
        if self._accounting is not False:
            done = _slurm(["sacct", "-X", "-P", "-n", "-j", job_id, "-o", SACCT_FORMAT])
            self._accounting = done.returncode == 0 and "disabled" not in done.stderr
            info = parse_sacct(done.stdout, job_id) if self._accounting else None
            if info is not None and info.ended:
                return info
        return self.job(job_id)

    def jobs(self, name_prefix: str = JOB_NAME_PREFIX) -> list[JobInfo]:
        """Live (pending, running, completing) jobs whose name starts with ``name_prefix``, with their comments."""
        done = _slurm(["squeue", "-h", "-o", "%i|%j|%T|%k"])
        if done.returncode != 0:
            raise RunnerError(f"squeue failed: {done.stderr.strip()}", hint="is slurmctld up? (scontrol ping)")
        found = []
        for line in done.stdout.splitlines():
            parts = line.split("|", 3)
            if len(parts) == 4 and parts[1].startswith(name_prefix):
                found.append(JobInfo(job_id=parts[0], name=parts[1], state=parts[2], comment=parts[3].strip()))
        return found

    def cancel(self, job_id: str) -> None:
        """``scancel`` the job (idempotent: an ended job is left as it is)."""
        _slurm(["scancel", job_id])

    def wait_gone(self, job_ids: set[str], timeout: float) -> set[str]:
        """Wait until none of ``job_ids`` is in ``squeue`` any more, at most ``timeout`` seconds.

        Returns:
            The ids still in the queue when the time ran out (empty: all gone).
        """
        deadline = time.monotonic() + timeout
        while True:
            left = {job.job_id for job in self.jobs()} & job_ids
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)

    def set_comment(self, job_id: str, comment: str) -> bool:
        """Rewrite the job's comment (a re-attaching worker takes the job over); whether Slurm accepted it."""
        return _slurm(["scontrol", "update", f"JobId={job_id}", f"Comment={comment}"]).returncode == 0


class _SlurmJob(ClusterJob):
    """A submitted job as :func:`pytrain.runners.base.supervise` sees it (a RunHandle)."""

    def __init__(self, cluster: SlurmCluster, job_id: str, log_path: Path, poll_seconds: float) -> None:
        super().__init__(f"Slurm job {job_id}", poll_seconds)
        self.cluster = cluster
        self.job_id = job_id
        self.log_path = log_path
        self.info: JobInfo | None = None

    def _read(self) -> JobInfo | None:
        return self.cluster.job(self.job_id)

    def _exit_code(self, info: JobInfo) -> int:
        if info.state == "COMPLETED" and info.exit_code == 0:
            return 0
        return info.exit_code or (128 + info.signal if info.signal else 1)

    def stop(self, grace_seconds: float) -> None:
        """``scancel``, then wait until the job has left the queue (Slurm's KillWait plus ``grace_seconds``)."""
        self.cluster.cancel(self.job_id)
        if self.cluster.wait_gone({self.job_id}, grace_seconds + GONE_SECONDS):
            log.warning("%s: still in squeue %.0f s after scancel", self.subject, grace_seconds + GONE_SECONDS)

    def output_tail(self) -> str:
        """The end of ``train.log`` without Slurm's own bookkeeping lines (``srun: error: n1: task 0:
        Exited with exit code 1``): the training's last words are what explain a failure."""
        lines = [line for line in tail(self.log_path, lines=60).splitlines() if not line.startswith(_SLURM_LINE_PREFIXES)]
        return "\n".join(lines[-20:])

    def oom_evidence(self, exit_code: int | None) -> str | None:
        if self.info is not None and self.info.state == "OUT_OF_MEMORY":
            return "Slurm job state OUT_OF_MEMORY"
        marker = oom_marker(tail(self.log_path, lines=60), (*_SLURM_OOM_MARKERS, *OOM_MARKERS))
        return f"the job's output says {marker!r}" if marker else None


class SlurmRunner:
    """Runs each task as one Slurm batch job (see the module docstring).

    Args:
        settings: PyTrain settings (default: the process settings): ``slurm_*``, ``worker_id``.
        poll_seconds: how often the job's state is read while it runs (seconds); each look is one
            ``scontrol`` call to the controller.
        grace_seconds: passed to :func:`pytrain.runners.base.supervise`; scancel's own SIGTERM ->
            SIGKILL delay is the cluster's ``KillWait``.
        cluster: the Slurm commands (tests may pass their own).
        command: the entrypoint run on the nodes instead of PyTrain's training (tests; see
            :func:`render_sbatch`).
    """

    name = "slurm"

    def __init__(self, settings: Settings | None = None, *, poll_seconds: float = 1.0, grace_seconds: float = 5.0,
                 cluster: SlurmCluster | None = None, command: Sequence[str] | None = None) -> None:
        self.settings = settings or get_settings()
        self.worker_id = self.settings.worker_id or "pytrain"
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.cluster = cluster or SlurmCluster()
        self.command = list(command) if command else None
        check_slurm_values(self.settings, "the settings")  # a bad value is refused at start-up, not per task

    def _env(self) -> dict[str, str]:
        # sbatch exports the submitting environment to the job: never the database or Triton secrets.
        return training_environment(self.settings)

    def find_run(self, task: PreparedTask) -> str | None:
        """The id of a live job of ``task`` (same task id and uid) that :meth:`run` would re-attach to.

        A job of the task on its way out (:data:`ENDING_STATES`: a fenced or crashed worker's
        ``scancel`` makes it ``COMPLETING`` at once) is never taken over: re-attaching would end
        in its ``CANCELLED``. This waits until it has left the queue (``grace_seconds`` +
        :data:`GONE_SECONDS` at most), so that a new job does not train beside it.

        Raises:
            RunnerError: such a job is still in the queue after that wait.
        """
        name = f"{JOB_NAME_PREFIX}{task.task_id}"
        ours = [job for job in self.cluster.jobs(name) if job.name == name and _uid_of(job) == (task.spec.uid or "-")]
        ending = {job.job_id for job in ours if job.ending}
        if ending:
            log.info("task %s: Slurm job(s) %s of this task are ending; waiting until they are gone", task.task_id, sorted(ending))
            timeout = self.grace_seconds + GONE_SECONDS
            if left := self.cluster.wait_gone(ending, timeout):
                raise RunnerError(f"task {task.task_id}: Slurm job(s) {', '.join(sorted(left))} of this task are still ending "
                                  f"{timeout:g} s after they were cancelled; not starting another beside them",
                                  hint="see `squeue -j ID` and `scontrol show job ID` (a node that does not answer?)")
        return next((job.job_id for job in ours if not job.ending), None)

    def run(self, task: PreparedTask, cancel: threading.Event, stop: threading.Event | None = None) -> RunResult:
        """Submit ``task`` as a Slurm job (or re-attach to its live job) and block until it ends.

        Returns:
            See :func:`slurm_result`. ``details``: ``job_id``, ``sbatch``, ``log``, ``seconds``,
            ``slurm_state``, ``reattached``.

        Raises:
            RunnerError: Slurm's tools are missing, do not answer, or sbatch refused the job.
            ConfigurationError: the task's nodes or the extra sbatch lines are invalid.
        """
        task.task_dir.mkdir(parents=True, exist_ok=True)
        script = task.task_dir / SBATCH_FILE
        comment = job_comment(task.task_id, task.spec.uid, self.worker_id)
        job_id = self.find_run(task)
        reattached = job_id is not None
        if reattached:
            # A crashed worker's job still trains this task: take it over rather than start it twice.
            log.info("task %s: re-attaching to Slurm job %s", task.task_id, job_id)
            self.cluster.set_comment(job_id, comment)
        else:
            text = render_sbatch(task, task_settings(self.settings, task), worker_id=self.worker_id, command=self.command)
            tmp = script.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, script)
            job_id = self.cluster.submit(script, self._env())
            log.info("task %s: submitted Slurm job %s (%s node(s))", task.task_id, job_id, task.spec.nodes)
        handle = _SlurmJob(self.cluster, job_id, task.log_path, self.poll_seconds)
        details = {"job_id": job_id, "sbatch": str(script), "log": str(task.log_path), "reattached": reattached}
        try:
            # The runner stops the job at the task's limit to the second, as the other runners do;
            # the job's --time (whole minutes) is Slurm's backstop for when no worker watches it.
            result = supervise(handle, task, cancel, stop, timeout_seconds=task.timeout_seconds, grace_seconds=self.grace_seconds,
                               poll_seconds=self.poll_seconds, details=details)
        finally:
            if handle.info is None or not handle.info.ended:
                if not handle.gone:
                    handle.stop(self.grace_seconds)  # an exception in this thread: leave nothing running
        stopped_by = result.outcome if result.outcome in (Outcome.CANCELLED, Outcome.INTERRUPTED) else None
        if result.outcome is Outcome.TIMED_OUT and (handle.info is None or handle.info.state != "TIMEOUT"):
            stopped_by = Outcome.TIMED_OUT  # this runner stopped it at the task's limit, not Slurm
        info = None if handle.gone else self.cluster.final(job_id)
        return slurm_result(info, job_id=job_id, stopped_by=stopped_by, tail_text=handle.output_tail(),
                            oom_evidence=handle.oom_evidence(result.exit_code), timeout_seconds=task.timeout_seconds,
                            details=result.details)

    def cleanup_orphans(self, active_task_ids: set[int]) -> set[int]:
        """Cancel this worker's live jobs of tasks not in ``active_task_ids``.

        A worker's own jobs are those whose comment names its worker id. The worker passes the
        tasks other workers run *and* (this runner being a
        :class:`~pytrain.runners.base.ClusterRunner`) those it still held when it crashed: their
        jobs are left running, and the next :meth:`run` of each re-attaches to it. A job of a
        task cancelled or finished in the meantime is cancelled here.

        Returns:
            The ids of the tasks whose jobs were cancelled.
        """
        mine = {}  # job id -> task id
        for job in self.cluster.jobs():
            meta = parse_job_comment(job.comment)
            if meta is not None and meta["worker"] == _worker_tag(self.worker_id):
                mine[job.job_id] = int(meta["task"])
        return stop_orphan_runs(mine, active_task_ids, stop=self.cluster.cancel, wait_gone=self.cluster.wait_gone,
                                gone_seconds=GONE_SECONDS, what="Slurm job")
