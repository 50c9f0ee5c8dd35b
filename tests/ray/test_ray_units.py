"""The ray runner's pure parts, without a cluster: the job's resources, runtime environment and
entrypoint from the settings and ``options["ray"]``, the refusal of values that bypassed
validation, the mapping from a job's end to an outcome, and the driver's rank environment and exit
status. The same behaviour on a real cluster: ``tests/ray/test_ray_cluster.py``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pytrain.errors import ConfigurationError
from pytrain.runners import Outcome, PreparedTask
from pytrain.runners.ray import (
    JobInfo, RayRunner, entrypoint, job_resources, job_spec, ray_result, runtime_env, submission_id, task_settings,
)
from pytrain.runners.ray_driver import (
    JOB_SPEC_VARIABLE, NODE_LOST_EXIT_CODE, JobSpec, exit_status, rank_environment, task_options,
)
from pytrain.settings import Settings
from pytrain.spec import NODE_NAME_VARIABLE, TaskSpec


def _settings(tmp_path: Path, **values) -> Settings:
    return Settings(model_tasks_dir=tmp_path / "tasks", sources_dir=tmp_path / "sources", ray_address="http://head:8265", **values)


def _task(tmp_path: Path, *, nodes: int = 1, options: dict | None = None, run_id: int | None = 7) -> PreparedTask:
    spec = TaskSpec(task_id=12, model_name="kitchen", class_list=["a", "b"], uid=str(uuid.UUID(int=1)), nodes=nodes, extra=options or {})
    return PreparedTask(spec=spec, task_dir=tmp_path / "tasks" / "task-12", sources_root=tmp_path / "sources", run_id=run_id)


def test_a_nodes_bundle_holds_its_gpus_cpus_memory_accelerator_and_custom_resources(tmp_path):
    settings = _settings(tmp_path, ray_gpus_per_node=8, ray_cpus_per_node=32, ray_memory="200G", ray_accelerator_type="H100",
                         ray_resources={"spot": 1})
    assert job_resources(settings) == (
        {"CPU": 32, "GPU": 8, "memory": 200 << 30, "accelerator_type:H100": 0.001, "spot": 1}, 8)
    assert job_resources(_settings(tmp_path)) == ({"CPU": 1.0}, 1)  # the default: one CPU process per node
    with pytest.raises(ConfigurationError, match="asks for no resource at all"):
        job_resources(_settings(tmp_path, ray_cpus_per_node=0))


def test_the_tasks_options_ray_override_the_settings_and_a_hostile_value_is_refused_at_job_building(tmp_path):
    task = _task(tmp_path, nodes=2, options={"ray": {"gpus_per_node": 2, "resources": {"node_a": 1}}})
    spec = job_spec(task, task_settings(_settings(tmp_path), task))
    assert (spec.nodes, spec.per_node, spec.world_size, spec.bundle) == (2, 2, 4, {"CPU": 1.0, "GPU": 2, "node_a": 1.0})
    # A value that bypassed the settings' validation (model_copy does not validate) never reaches the cluster.
    for key, value in {"ray_accelerator_type": "H100\ntouch /tmp/x", "ray_resources": {"a b": 1.0}, "ray_pip": ["-e git+https://x"],
                       "ray_memory": "8G;id", "ray_container_image": "img $(id)"}.items():
        bad = _settings(tmp_path).model_copy(update={key: value})
        with pytest.raises(ConfigurationError, match=rf"Ray setting {key.removeprefix('ray_')}="):
            job_spec(task, bad)


def test_the_entrypoint_is_a_fixed_command_and_the_spec_travels_as_data(tmp_path):
    settings = _settings(tmp_path, ray_python="/opt/venv/bin/python")
    assert entrypoint(settings) == "/opt/venv/bin/python -m pytrain.runners.ray_driver"
    with pytest.raises(ValueError, match="must be a command name or a path"):
        entrypoint(settings.model_copy(update={"ray_python": "python; curl x | sh"}))
    task = _task(tmp_path, nodes=2)
    spec = job_spec(task, settings, command=["python", "-c", "pass"])
    assert JobSpec.from_json(runtime_env(settings, spec)["env_vars"][JOB_SPEC_VARIABLE]) == spec


def test_the_runtime_env_passes_pytrains_settings_but_no_secret_and_takes_an_image_or_a_pip_list(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTRAIN_NUM_WORKERS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTRAIN_DATABASE_URL", "postgresql://u:pw@db/pytrain")
    monkeypatch.setenv("PYTRAIN_TRITON_CONTROL_KEY", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    settings = _settings(tmp_path, ray_pip=["av>=12"])
    environment = runtime_env(settings, job_spec(_task(tmp_path), settings))
    env = environment["env_vars"]
    assert (env["PYTRAIN_NUM_WORKERS"], env["OMP_NUM_THREADS"], env["PYTHONUNBUFFERED"]) == ("0", "1", "1")
    assert not {"PYTRAIN_DATABASE_URL", "PYTRAIN_TRITON_CONTROL_KEY", "AWS_SECRET_ACCESS_KEY", "PATH", "HOME"} & set(env)
    assert environment["pip"] == ["av>=12"] and "image_uri" not in environment
    image = settings.model_copy(update={"ray_pip": [], "ray_container_image": "nvcr.io/nvidia/pytorch:24.10-py3"})
    assert runtime_env(image, job_spec(_task(tmp_path), image))["image_uri"] == "nvcr.io/nvidia/pytorch:24.10-py3"
    both = settings.model_copy(update={"ray_container_image": "nvcr.io/nvidia/pytorch:24.10-py3"})
    with pytest.raises(ConfigurationError, match="a container image or a pip list, not both"):
        runtime_env(both, job_spec(_task(tmp_path), both))


def test_a_submission_id_names_the_task_its_uid_and_its_run(tmp_path):
    assert submission_id(_task(tmp_path)) == f"pytrain-task-12-{uuid.UUID(int=1)}-run-7"


def test_hostile_ray_settings_are_refused_when_read_naming_the_variable(monkeypatch):
    from pydantic import ValidationError

    for name, value in {"PYTRAIN_RAY_PIP": '["--extra-index-url=http://x"]', "PYTRAIN_RAY_ADDRESS": "http://head:8265/$(id)",
                        "PYTRAIN_RAY_RESOURCES": '{"a\\nb": 1}', "PYTRAIN_RAY_ACCELERATOR_TYPE": "H100 --x"}.items():
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError, match=name.removeprefix("PYTRAIN_").lower()):
            Settings()
        monkeypatch.delenv(name)


def test_the_ray_runner_needs_an_address_and_imports_no_ray_until_it_talks_to_the_cluster(tmp_path):
    with pytest.raises(ConfigurationError, match="needs the cluster's address"):
        RayRunner(_settings(tmp_path).model_copy(update={"ray_address": None}))
    code = "import sys, pytrain.runners.ray, pytrain.runners.ray_driver; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


LOST = "=== pytrain ray job: task 12: node abc was lost during the run (NodeDiedError)"


@pytest.mark.parametrize(("info", "stopped_by", "oom", "outcome", "message"), [
    (JobInfo("j", "SUCCEEDED", 0), None, None, Outcome.SUCCEEDED, ""),
    (JobInfo("j", "FAILED", 1), None, None, Outcome.FAILED, "Ray job j exited with code 1: boom"),
    (JobInfo("j", "FAILED", 75), None, None, Outcome.LOCKED, "Ray job j did not start: boom"),
    (JobInfo("j", "FAILED", 1), None, "the job's output says 'MemoryError'", Outcome.OUT_OF_MEMORY,
     "out of memory (the job's output says 'MemoryError'); lower batch_size, num_frames or the frame size"),
    (JobInfo("j", "FAILED", NODE_LOST_EXIT_CODE), None, None, Outcome.REQUEUED,
     "Ray job j lost a node: task 12: node abc was lost during the run (NodeDiedError)"),
    (JobInfo("j", "STOPPED", 143), None, None, Outcome.FAILED,
     "Ray job j was stopped outside PyTrain (ray job stop); submit the task again to retry"),
    (JobInfo("j", "FAILED", None, "runtime_env setup failed: pip install av==99 failed"), None, None, Outcome.FAILED,
     "Ray job j failed before its driver ran: runtime_env setup failed: pip install av==99 failed"),
    (JobInfo("j", "STOPPED", 143), Outcome.CANCELLED, None, Outcome.CANCELLED, "cancelled"),
    (None, None, None, Outcome.FAILED, "Ray job j is gone and its end is unknown (was the Ray head restarted?)"),
])
def test_ray_result_maps_how_a_job_ended_to_one_outcome(info, stopped_by, oom, outcome, message):
    result = ray_result(info, stopped_by=stopped_by, tail_text="working\nboom", oom_evidence=oom, timeout_seconds=None,
                        details={"job_id": "j"}, driver_text=LOST)
    assert (result.outcome, result.message) == (outcome, message)


def test_the_driver_gives_each_rank_torchruns_variables_and_its_node_name():
    spec = JobSpec(task_id=1, task_dir="/t", sources_root="/s", nodes=2, per_node=2, bundle={"CPU": 4, "GPU": 2, "node_a": 1})
    env = rank_environment(spec, 1, 1, ("10.0.0.5", 29500), "node-b-id")
    assert {name: env[name] for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
                                         "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE", NODE_NAME_VARIABLE)} == {
        "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "29500", "TORCHELASTIC_USE_AGENT_STORE": "True", NODE_NAME_VARIABLE: "node-b-id"}
    single = rank_environment(JobSpec(1, "/t", "/s", 1, 1, {"CPU": 1}), 0, 0, None, "n")
    assert "RANK" not in single and "WORLD_SIZE" not in single  # one process: a plain run, as without torchrun
    assert task_options(spec.bundle) == {"num_cpus": 4, "num_gpus": 2, "memory": None, "resources": {"node_a": 1}}
    assert [exit_status(codes) for codes in ([0, 0], [0, 1], [-9, 1], [75])] == [0, 1, 137, 75]


class FakeCluster:
    """The Jobs API calls :class:`RayRunner` makes, answered from a list (a fast test of the logic
    around them; the real cluster: tests/ray/test_ray_cluster.py and the runner contract)."""

    def __init__(self, jobs: list[JobInfo]) -> None:
        self.listed = jobs
        self.stopped: list[str] = []

    def jobs(self) -> list[JobInfo]:
        return self.listed

    def stop(self, submission: str) -> None:
        self.stopped.append(submission)

    def wait_ended(self, submissions: set[str], timeout: float) -> set[str]:
        return set()


def _job(task_id: int, uid: str, run: int, status: str, worker: str = "w1") -> JobInfo:
    meta = {"pytrain_task": str(task_id), "pytrain_uid": uid, "pytrain_run": str(run), "pytrain_worker": worker}
    return JobInfo(f"pytrain-task-{task_id}-{uid}-run-{run}", status, None, "", meta)


def test_find_run_takes_over_a_live_job_of_the_same_task_and_uid_whoever_submitted_it(tmp_path):
    uid = str(uuid.UUID(int=1))
    cluster = FakeCluster([_job(12, uid, 1, "FAILED"), _job(12, str(uuid.UUID(int=2)), 2, "RUNNING"), _job(120, uid, 3, "RUNNING"),
                           _job(12, uid, 4, "RUNNING", worker="a-dead-worker")])
    runner = RayRunner(_settings(tmp_path, worker_id="w1"), cluster=cluster)
    assert runner.find_run(_task(tmp_path)) == f"pytrain-task-12-{uid}-run-4"
    cluster.listed = cluster.listed[:3]  # only an ended job, another uid's, another task's
    assert runner.find_run(_task(tmp_path)) is None


def test_cleanup_orphans_stops_only_this_workers_live_jobs_of_tasks_nobody_holds(tmp_path):
    uid = str(uuid.UUID(int=1))
    cluster = FakeCluster([_job(1, uid, 1, "RUNNING"), _job(2, uid, 2, "PENDING"), _job(3, uid, 3, "SUCCEEDED"),
                           _job(4, uid, 4, "RUNNING", worker="w2"), _job(5, uid, 5, "RUNNING")])
    runner = RayRunner(_settings(tmp_path, worker_id="w1"), cluster=cluster)
    assert runner.cleanup_orphans({5}) == {1, 2}
    assert cluster.stopped == [f"pytrain-task-1-{uid}-run-1", f"pytrain-task-2-{uid}-run-2"]


def test_a_cluster_that_does_not_answer_is_a_runner_error_naming_the_address_and_the_fix():
    from pytrain.errors import RunnerError
    from pytrain.runners.ray import RayCluster

    pytest.importorskip("ray", reason="Ray is not installed (pip install 'pytrain[ray]')")
    with pytest.raises(RunnerError, match=r"cannot connect to the Ray cluster at http://127.0.0.1:1: ") as caught:
        RayCluster("http://127.0.0.1:1").jobs()
    assert "PYTRAIN_RAY_ADDRESS" in caught.value.hint


def test_a_node_that_cannot_start_the_training_names_the_cause_and_the_shared_folder():
    from pytrain.runners.ray_driver import node_failure_line

    missing = FileNotFoundError(2, "No such file or directory", "/shared/model_tasks/task-12")
    assert node_failure_line("n1", missing) == (
        "error: Ray node n1 could not start the training: FileNotFoundError: [Errno 2] No such file or directory: "
        "'/shared/model_tasks/task-12' (is the task folder on a file system every Ray worker node mounts at the same path?)")
    assert node_failure_line("n1", PermissionError("denied")) == "error: Ray node n1 could not start the training: PermissionError: denied"
