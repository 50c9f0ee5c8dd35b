"""The driver of a PyTrain Ray job: places a task's nodes and starts its training processes.

The ray runner (:mod:`pytrain.runners.ray`) submits ``python -m pytrain.runners.ray_driver`` as a
Ray job; the job's spec (:class:`JobSpec`) comes as data in the runtime environment's
:data:`JOB_SPEC_VARIABLE`, never as shell text. On the cluster this driver:

1. reserves a placement group of ``nodes`` bundles (one per node; ``STRICT_SPREAD``: never two on
   one node), each with the node's GPUs, CPUs, memory and custom resources, and waits for it (the
   job is pending meanwhile, as a Slurm job waits for its allocation);
2. starts the rendezvous of ``torch.distributed`` on bundle 0's node (:class:`StoreHost`, a
   ``TCPStore`` that outlives every rank, as torchrun's agent hosts it);
3. runs one Ray task per bundle (:func:`run_node`) that starts the node's training processes, one
   per GPU (or one on the CPU), with the variables torchrun would set (``RANK``, ``LOCAL_RANK``,
   ``WORLD_SIZE``, ``MASTER_ADDR``, ...) and ``PYTRAIN_NODE_NAME`` = the Ray node id, and streams
   their output back; the driver prints it, so it is the job's log (the runner appends it to
   ``train.log``);
4. exits with the first failing process's exit code (0 when all succeeded), with
   :data:`NODE_LOST_EXIT_CODE` when a node of the job died (the runner re-queues the task), or
   with 143 when the job was stopped (``ray job stop``: SIGTERM).

The training processes are children of the Ray workers with ``PR_SET_PDEATHSIG`` = SIGKILL: when
a worker dies (its node is stopped, the job is stopped) they die with it, so nothing trains on
after its job. docs/adr/0017-ray-runner.md says why this, and not torchrun or Ray Train's
``TorchTrainer``.

This module imports ``ray`` only in :func:`main` and the functions it runs on the cluster: the
orchestrator imports it for its constants and :class:`JobSpec`.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from pytrain.spec import NODE_NAME_VARIABLE

#: The runtime-environment variable that carries the job's :class:`JobSpec` (JSON).
JOB_SPEC_VARIABLE = "PYTRAIN_RAY_JOB"
#: The driver's exit code when a node of the job died during the run (the task is re-queued).
#: 76 (``EX_PROTOCOL``) is next to the training's own 75 (``RUN_LOCKED_EXIT_CODE``).
NODE_LOST_EXIT_CODE = 76
#: The driver's exit code when the job was stopped (128 + SIGTERM).
STOPPED_EXIT_CODE = 128 + signal.SIGTERM
#: The first line of the job's log, written by the driver (left out of the task row's stderr tail).
DRIVER_LINE_PREFIX = "=== pytrain ray job"
#: How long the other nodes may take to end once one node's processes ended badly (seconds): a rank
#: whose peer died fails on its next collective; one stuck in it is cancelled after this.
SETTLE_SECONDS = 30.0
#: How long after a node's task failed the driver waits for Ray to see the node dead (seconds): a
#: stopped node is marked dead at once; one that vanished, after Ray's health checks (~15 s).
NODE_DEATH_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class JobSpec:
    """What one Ray job runs, built by the runner (:func:`pytrain.runners.ray.job_spec`).

    Attributes:
        task_id: the task row's id (log lines).
        task_dir, sources_root: absolute paths, the same on every node (a shared file system).
        nodes: placement-group bundles, one per node.
        per_node: training processes per node (one per GPU, or one on the CPU).
        bundle: each bundle's resources in Ray's names (``{"CPU": 8, "GPU": 8, "memory": bytes,
            "accelerator_type:H100": 0.001, "spot": 1}``).
        command: the program each process runs (``--task-dir``/``--sources-root`` appended); empty:
            ``<the node's python> -m pytrain.training``.
        grace_seconds: SIGTERM -> SIGKILL when the processes are stopped.
    """

    task_id: int
    task_dir: str
    sources_root: str
    nodes: int
    per_node: int
    bundle: dict[str, float]
    command: list[str] = field(default_factory=list)
    grace_seconds: float = 2.0

    def to_json(self) -> str:
        """The spec as :data:`JOB_SPEC_VARIABLE` carries it."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        """Read :meth:`to_json`'s text."""
        return cls(**json.loads(text))

    @property
    def world_size(self) -> int:
        """Training processes in all."""
        return self.nodes * self.per_node


def task_options(bundle: dict[str, float]) -> dict[str, Any]:
    """A bundle's resources as the options of a Ray task that takes the whole bundle
    (``num_cpus``, ``num_gpus``, ``memory`` and the rest as ``resources``)."""
    custom = {name: amount for name, amount in bundle.items() if name not in ("CPU", "GPU", "memory")}
    return {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0), "memory": bundle.get("memory", 0) or None,
            "resources": custom}


def rank_environment(spec: JobSpec, node_index: int, local_rank: int, master: tuple[str, int] | None, node_id: str) -> dict[str, str]:
    """The environment of one training process: the Ray worker's, plus the variables torchrun sets
    (when there are several processes) and :data:`~pytrain.spec.NODE_NAME_VARIABLE` (metrics.json's node name)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", NODE_NAME_VARIABLE: node_id}
    env.pop(JOB_SPEC_VARIABLE, None)
    if spec.world_size > 1 and master is not None:
        env.update({
            "RANK": str(node_index * spec.per_node + local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(spec.world_size),
            "LOCAL_WORLD_SIZE": str(spec.per_node), "GROUP_RANK": str(node_index), "NODE_RANK": str(node_index),
            "MASTER_ADDR": master[0], "MASTER_PORT": str(master[1]), "TORCHELASTIC_USE_AGENT_STORE": "True",
        })
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the Ray worker that started it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the stop path still ends the processes
        pass


def _start(spec: JobSpec, env: dict[str, str]) -> subprocess.Popen:
    command = spec.command or [sys.executable, "-m", "pytrain.training"]
    argv = [*command, "--task-dir", spec.task_dir, "--sources-root", spec.sources_root]
    return subprocess.Popen(argv, cwd=spec.task_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)


def _pump(stream, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", errors="replace").rstrip("\n"))


def _stop(processes: list[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM every process group still running, SIGKILL what is left after ``grace_seconds``."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        alive = [proc for proc in processes if proc.poll() is None]
        for proc in alive:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while any(proc.poll() is None for proc in alive) and time.monotonic() < deadline:
            time.sleep(0.05)


def exit_status(codes: list[int]) -> int:
    """One node's exit code: its first failing process's (a signal ``-N`` as ``128 + N``), else 0."""
    failed = [code for code in codes if code != 0]
    if not failed:
        return 0
    return 128 - failed[0] if failed[0] < 0 else failed[0]


def run_node(spec: JobSpec, node_index: int, master: tuple[str, int] | None) -> Iterator[tuple[str, Any]]:
    """One node's part of the job (a Ray generator task in the node's bundle): start its
    ``per_node`` training processes and yield ``("lines", [text, ...])`` as they write, then
    ``("exit", code)`` (:func:`exit_status`). A cancelled task stops its processes."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    lines: queue.Queue = queue.Queue()
    processes = [_start(spec, rank_environment(spec, node_index, local, master, node_id)) for local in range(spec.per_node)]
    readers = [threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True) for proc in processes]
    for reader in readers:
        reader.start()
    try:
        while any(reader.is_alive() for reader in readers) or not lines.empty():
            batch = _drain(lines, 0.2)
            if batch:
                yield "lines", batch
        yield "exit", exit_status([proc.wait() for proc in processes])
    finally:
        _stop(processes, spec.grace_seconds)


def _drain(lines: queue.Queue, seconds: float) -> list[str]:
    batch = []
    try:
        batch.append(lines.get(timeout=seconds))
        while len(batch) < 1000:
            batch.append(lines.get_nowait())
    except queue.Empty:
        pass
    return batch


class StoreHost:
    """The rendezvous of ``torch.distributed``, as torchrun's agent hosts it: a ``TCPStore`` server in
    a Ray actor in bundle 0 (rank 0's node), alive until the driver ends, so no rank's exit takes the
    store away from the others (rank 0 hosting it made a rank abort at exit: "terminate called
    without an active exception"). The ranks are its clients (``TORCHELASTIC_USE_AGENT_STORE``)."""

    def __init__(self, world_size: int) -> None:
        from datetime import timedelta

        import torch.distributed as dist

        self.store = dist.TCPStore("0.0.0.0", 0, world_size, is_master=True, timeout=timedelta(minutes=30),
                                   wait_for_workers=False, multi_tenant=True)

    def address(self) -> tuple[str, int]:
        """This node's address and the store's port: ``MASTER_ADDR``, ``MASTER_PORT``."""
        import ray

        return ray.util.get_node_ip_address(), self.store.port


def _follow(index: int, generator, events: queue.Queue) -> None:
    """Relay one node task's yields to the driver's ``events``: ``(index, kind, value)``."""
    import ray

    try:
        for ref in generator:
            kind, value = ray.get(ref)
            events.put((index, kind, value))
    except Exception as exc:  # noqa: BLE001 - a Ray error: the node or its worker died, or it was cancelled
        events.put((index, "error", exc))
    events.put((index, "done", None))


def _node_alive(node_id: str) -> bool:
    import ray

    return any(node["NodeID"] == node_id and node["Alive"] for node in ray.nodes())


def _lost_node(node_id: str) -> bool:
    """Whether ``node_id`` is dead, or is seen dead within :data:`NODE_DEATH_SECONDS`."""
    deadline = time.monotonic() + NODE_DEATH_SECONDS
    while _node_alive(node_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


class _Driver:
    """The running job: its placement group, its node tasks and what they reported."""

    def __init__(self, spec: JobSpec) -> None:
        import ray
        from ray.util.placement_group import placement_group

        self.spec = spec
        self.ray = ray
        self.group = placement_group([dict(spec.bundle)] * spec.nodes, strategy="STRICT_SPREAD" if spec.nodes > 1 else "PACK")
        self.generators: list = []
        self.events: queue.Queue = queue.Queue()
        self.codes: dict[int, int] = {}
        self.errors: dict[int, Exception] = {}
        self.store = None  # the StoreHost actor of a multi-process job

    def _strategy(self, index: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)

    def start(self) -> None:
        """Wait for the placement group, find the rendezvous, start one task per node."""
        ray, spec = self.ray, self.spec
        say(f"task {spec.task_id}: waiting for {spec.nodes} node(s) with {spec.bundle}")
        ray.get(self.group.ready())
        self.node_ids = ray.util.placement_group_table(self.group)["bundles_to_node_id"]
        master = None
        if spec.world_size > 1:
            self.store = ray.remote(StoreHost).options(num_cpus=0, scheduling_strategy=self._strategy(0)).remote(spec.world_size)
            master = ray.get(self.store.address.remote())
        say(f"task {spec.task_id}: {spec.nodes} node(s) x {spec.per_node} process(es) on {', '.join(self.node_ids.values())}"
            + (f"; rendezvous {master[0]}:{master[1]}" if master else ""))
        node = ray.remote(run_node)
        for index in range(spec.nodes):
            generator = node.options(num_returns="streaming", max_retries=0, scheduling_strategy=self._strategy(index),
                                     **task_options(spec.bundle)).remote(spec, index, master)
            self.generators.append(generator)
            threading.Thread(target=_follow, args=(index, generator, self.events), daemon=True).start()

    def watch(self) -> int:
        """Print the nodes' output until every node task ended; the job's exit code."""
        done: set[int] = set()
        settle_by: float | None = None
        while len(done) < self.spec.nodes:
            if settle_by is not None and time.monotonic() > settle_by:
                say(f"task {self.spec.task_id}: nodes {sorted(set(range(self.spec.nodes)) - done)} did not end "
                    f"{SETTLE_SECONDS:g} s after another failed; cancelling them")
                self.cancel()
                settle_by = None
            try:
                index, kind, value = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if kind == "lines":
                print("\n".join(value), flush=True)
            elif kind == "exit":
                self.codes[index] = value
            elif kind == "error":
                self.errors[index] = value
            elif kind == "done":
                done.add(index)
                if (self.codes.get(index) or index in self.errors) and settle_by is None:
                    settle_by = time.monotonic() + SETTLE_SECONDS
        return self.exit_code()

    def exit_code(self) -> int:
        """:data:`NODE_LOST_EXIT_CODE` when a node died; else the first failing node's code, else 0."""
        import ray.exceptions

        for index, error in sorted(self.errors.items()):
            node_id = self.node_ids.get(index, "?")
            if isinstance(error, ray.exceptions.TaskCancelledError):
                continue
            if isinstance(error, ray.exceptions.OutOfMemoryError):  # Ray's memory monitor killed the worker
                say(f"task {self.spec.task_id}: node {node_id}: OutOfMemoryError: {error}")
                return 137
            if isinstance(error, ray.exceptions.RayTaskError):  # the node task itself raised: not a lost node
                print(node_failure_line(node_id, getattr(error, "cause", None) or error), flush=True)
                return 1
            if _lost_node(node_id):
                say(f"task {self.spec.task_id}: node {node_id} was lost during the run ({type(error).__name__})")
                return NODE_LOST_EXIT_CODE
            say(f"task {self.spec.task_id}: node {node_id}: {type(error).__name__}: {error}")
            return 1
        return next((code for _, code in sorted(self.codes.items()) if code), 0)

    def cancel(self) -> None:
        """Force-cancel every node task: its worker dies, and its processes with it (PDEATHSIG)."""
        for generator in self.generators:
            try:
                self.ray.cancel(generator, force=True)
            except Exception:  # noqa: BLE001 - already ended
                pass

    def close(self) -> None:
        """Cancel what still runs, end the store and free the placement group."""
        from ray.util.placement_group import remove_placement_group

        self.cancel()
        if self.store is not None:
            self.ray.kill(self.store)
        try:
            remove_placement_group(self.group)
        except Exception:  # noqa: BLE001 - the cluster is going away
            pass


def node_failure_line(node_id: str, cause: BaseException) -> str:
    """The job log's last line when a node could not run the training at all: the cause, and for a
    missing file the usual reason (the task folder is not on a file system that node mounts)."""
    line = f"error: Ray node {node_id} could not start the training: {type(cause).__name__}: {cause}"
    if isinstance(cause, FileNotFoundError):
        line += " (is the task folder on a file system every Ray worker node mounts at the same path?)"
    return line


def say(message: str) -> None:
    """One line of the driver's own in the job's log."""
    print(f"{DRIVER_LINE_PREFIX}: {message}", flush=True)


def _stopped(signum: int, frame: Any) -> None:
    raise SystemExit(STOPPED_EXIT_CODE)


def main() -> int:
    """Run the job whose spec is in :data:`JOB_SPEC_VARIABLE`; its exit code (see the module docstring)."""
    import ray

    spec = JobSpec.from_json(os.environ[JOB_SPEC_VARIABLE])
    signal.signal(signal.SIGTERM, _stopped)  # `ray job stop`: cancel the node tasks, then go
    ray.init(address="auto", log_to_driver=False, logging_level=logging.WARNING)  # the nodes' output comes as data (run_node), in order
    driver = _Driver(spec)
    try:
        driver.start()
        return driver.watch()
    finally:
        driver.close()


if __name__ == "__main__":
    # Through the package's module, not __main__: Ray then ships run_node and JobSpec to the nodes
    # by name (PyTrain is installed there), not by value.
    from pytrain.runners import ray_driver

    sys.exit(ray_driver.main())
