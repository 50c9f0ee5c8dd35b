"""The Slurm runner's pure parts, without a cluster: what scontrol/sacct print -> JobInfo ->
RunResult, the job comment, the generated batch script, and who refuses nodes > 1.

The scontrol lines are real output of this repository's test cluster (Slurm 22.05, no
accounting); the sacct lines are what a cluster with accounting prints for the same format.
Budget: < 1 s for the file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from fixtures.slurm import HOSTILE_SUFFIXES

from pytrain.errors import ConfigurationError
from pytrain.runners import LocalRunner, Outcome, PreparedTask, check_nodes
from pytrain.runners.slurm import (
    JobInfo, SlurmCluster, SlurmRunner, job_comment, parse_job_comment, parse_sacct, parse_scontrol_job, render_sbatch, slurm_result, task_settings,
    time_limit_minutes,
)
from pytrain.settings import Settings
from pytrain.spec import TaskSpec

FAILED = (
    "JobId=7 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901753 Nice=0 Account=(null) "
    "QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=0 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=3:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-12-01T03:00:55 "
    "Partition=debug AllocNode:Sid=localhost:18647 ReqNodeList=(null) ExcNodeList=(null) NodeList=n1 BatchHost=n1 "
    "NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=1000M,node=1,billing=1 "
    "Command=(null) WorkDir=/tmp StdErr=/dev/null StdIn=/dev/null StdOut=/dev/null Power= "
)
CANCELLED = (
    "JobId=8 JobName=pytrain-task-3 UserId=root(0) JobState=CANCELLED Reason=None Dependency=(null) Requeue=0 "
    "ExitCode=0:15 RunTime=00:00:01 TimeLimit=UNLIMITED NodeList=n1 BatchHost=n1 NumNodes=1 "
    "Comment=pytrain:task=3:uid=6aafeae6-d049-4acd-9689-bf8a41e62fde:worker=vm-cpu WorkDir=/tmp Power= "
)
TIMEOUT = "JobId=3 JobName=hang.sh JobState=TIMEOUT Reason=TimeLimit Dependency=(null) ExitCode=0:15 RunTime=00:01:10 NodeList=n1"
PENDING = ("JobId=4 JobName=hang.sh JobState=PENDING Reason=Nodes_required_for_job_are_DOWN,_DRAINED_or_reserved_for_jobs_in_"
           "higher_priority_partitions Dependency=(null) ExitCode=0:0 NodeList= NumNodes=2-2")
SACCT = """\
41|pytrain-task-5|CANCELLED by 1000|0:15|n[1-2]
42|pytrain-task-6|NODE_FAIL|0:0|n[1-2]
42.batch|batch|CANCELLED|0:15|n1
43|pytrain-task-7|OUT_OF_MEMORY|0:125|n1
44|pytrain-task-8|COMPLETED|0:0|n1
45|pytrain-task-9|PREEMPTED|0:0|n2
46|pytrain-task-10|FAILED|2:0|n1
"""


def test_scontrol_lines_parse_to_state_exit_code_signal_and_comment():
    assert parse_scontrol_job(FAILED) == JobInfo("7", "FAILED", 3, 0, "NonZeroExitCode", name="wrap", nodes="n1")
    cancelled = parse_scontrol_job(CANCELLED)
    assert (cancelled.state, cancelled.exit_code, cancelled.signal, cancelled.reason) == ("CANCELLED", 0, 15, "")
    assert parse_job_comment(cancelled.comment) == {"task": "3", "uid": "6aafeae6-d049-4acd-9689-bf8a41e62fde", "worker": "vm-cpu"}
    assert (parse_scontrol_job(TIMEOUT).state, parse_scontrol_job(TIMEOUT).reason) == ("TIMEOUT", "TimeLimit")
    pending = parse_scontrol_job(PENDING)
    assert (pending.state, pending.ended, pending.nodes) == ("PENDING", False, "")
    assert parse_scontrol_job("slurm_load_jobs error: Invalid job id specified\n") is None


def test_sacct_lines_parse_with_who_cancelled_and_steps_ignored():
    assert parse_sacct(SACCT, "41") == JobInfo("41", "CANCELLED", 0, 15, cancelled_by=1000, name="pytrain-task-5", nodes="n[1-2]")
    assert parse_sacct(SACCT, "42").state == "NODE_FAIL"  # the allocation, not its 42.batch step
    assert (parse_sacct(SACCT, "43").state, parse_sacct(SACCT, "43").signal) == ("OUT_OF_MEMORY", 125)
    assert (parse_sacct(SACCT, "46").state, parse_sacct(SACCT, "46").exit_code) == ("FAILED", 2)
    assert parse_sacct(SACCT, "99") is None and parse_sacct("", "41") is None


def _result(info, *, stopped_by=None, tail="Traceback\nValueError: bad clip", oom=None, timeout=90.0):
    return slurm_result(info, job_id=info.job_id if info else "9", stopped_by=stopped_by, tail_text=tail, oom_evidence=oom,
                        timeout_seconds=timeout, details={})


@pytest.mark.parametrize(("source", "outcome", "code", "message"), [
    ("scontrol", Outcome.FAILED, 3, "Slurm job 7 exited with code 3: ValueError: bad clip"),
    ("sacct-44", Outcome.SUCCEEDED, 0, ""),
    ("sacct-46", Outcome.FAILED, 2, "Slurm job 46 exited with code 2: ValueError: bad clip"),
    ("sacct-43", Outcome.OUT_OF_MEMORY, 253,
     "out of memory (Slurm job state OUT_OF_MEMORY); lower batch_size, num_frames or the frame size"),
    ("timeout", Outcome.TIMED_OUT, 0,
     "timed out: Slurm job 3 reached its time limit (90 s, rounded up to whole minutes; PYTRAIN_TASK_TIMEOUT_SECONDS)"),
    ("sacct-42", Outcome.REQUEUED, 0, "Slurm job 42 ended NODE_FAIL on n[1-2]"),
    ("sacct-45", Outcome.REQUEUED, 0, "Slurm job 45 ended PREEMPTED on n2"),
    ("sacct-41", Outcome.FAILED, 0,
     "Slurm job 41 was cancelled by an operator (uid 1000) (scancel outside PyTrain); submit the task again to retry"),
    ("cancelled", Outcome.FAILED, 0,
     "Slurm job 8 was cancelled by an operator (scancel outside PyTrain); submit the task again to retry"),
])
def test_each_slurm_end_maps_to_one_outcome_and_message(source, outcome, code, message):
    info = {"scontrol": parse_scontrol_job(FAILED), "timeout": parse_scontrol_job(TIMEOUT), "cancelled": parse_scontrol_job(CANCELLED)}.get(source)
    if source.startswith("sacct-"):
        info = parse_sacct(SACCT, source.split("-")[1])
    result = _result(info)
    assert (result.outcome, result.message) == (outcome, message)
    if outcome is not Outcome.OUT_OF_MEMORY:
        assert result.exit_code == code
    assert result.stderr_tail == ("" if outcome is Outcome.SUCCEEDED else "Traceback\nValueError: bad clip")
    assert result.details["slurm_state"] == info.state


def test_our_own_cancel_wins_over_what_slurm_says_and_memory_kills_are_out_of_memory():
    cancelled = parse_scontrol_job(CANCELLED)
    assert _result(cancelled, stopped_by=Outcome.CANCELLED).message == "cancelled"
    assert _result(cancelled, stopped_by=Outcome.INTERRUPTED).outcome is Outcome.INTERRUPTED
    assert _result(cancelled, stopped_by=Outcome.TIMED_OUT, timeout=2).message == "timed out after 2 s (PYTRAIN_TASK_TIMEOUT_SECONDS)"
    # OverMemoryKill: the job ends FAILED 137; slurmstepd's line in the output is the evidence.
    killed = JobInfo("5", "FAILED", 137, 0, "NonZeroExitCode")
    result = _result(killed, oom="the job's output says 'Exceeded job memory limit'")
    assert result.outcome is Outcome.OUT_OF_MEMORY and result.exit_code == 137
    gone = _result(None)
    assert (gone.outcome, gone.message.startswith("Slurm job 9 is gone and its end is unknown")) == (Outcome.FAILED, True)


def test_job_comment_round_trips_and_ignores_foreign_comments():
    comment = job_comment(12, "6aafeae6-d049-4acd-9689-bf8a41e62fde", "login 1:gpu0")
    assert comment == "pytrain:task=12:uid=6aafeae6-d049-4acd-9689-bf8a41e62fde:worker=login_1_gpu0"
    assert parse_job_comment(comment) == {"task": "12", "uid": "6aafeae6-d049-4acd-9689-bf8a41e62fde", "worker": "login_1_gpu0"}
    assert parse_job_comment("my own job") is None and parse_job_comment("") is None


def _task(tmp_path: Path, nodes: int, timeout: float | None = 3600, options: dict | None = None) -> PreparedTask:
    spec = TaskSpec(task_id=12, model_name="kitchen", class_list=["a", "b"], nodes=nodes, uid="6aafeae6-d049-4acd-9689-bf8a41e62fde",
                    extra=options or {})
    return PreparedTask(spec=spec, task_dir=tmp_path / "model_tasks" / "task-12-kitchen-6aafeae6", sources_root=tmp_path / "sources",
                        timeout_seconds=timeout)


def test_one_node_one_process_is_plain_python_without_torchrun(tmp_path):
    script = render_sbatch(_task(tmp_path, 1, timeout=61), Settings(slurm_python="/opt/venv/bin/python"), worker_id="w")
    assert "#SBATCH --nodes=1\n" in script and "#SBATCH --time=2\n" in script  # 61 s -> 2 whole minutes
    assert "torch.distributed.run" not in script and "--gpus-per-node" not in script and "--mem" not in script
    assert script.rstrip().splitlines()[-1] == (
        f"exec srun --kill-on-bad-exit=1 --ntasks-per-node=1 /opt/venv/bin/python -m pytrain.training "
        f"--task-dir {tmp_path}/model_tasks/task-12-kitchen-6aafeae6 --sources-root {tmp_path}/sources"
    )
    assert time_limit_minutes(None) is None and time_limit_minutes(1) == 1 and time_limit_minutes(120) == 2


def test_two_nodes_with_gpus_and_pyxis_run_one_torchrun_per_node(tmp_path):
    settings = Settings(slurm_gpus_per_node=8, slurm_cpus_per_task=64, slurm_mem="512G", slurm_partition="gpu", slurm_account="lab",
                        slurm_qos="high", slurm_container_image="nvcr.io#nvidia/pytorch:24.10-py3",
                        slurm_extra_sbatch="--exclusive; --constraint=h100", torch_home=tmp_path / "torch")
    settings.torch_home.mkdir()
    script = render_sbatch(_task(tmp_path, 2), settings, worker_id="login1-cpu")
    task_dir = tmp_path / "model_tasks" / "task-12-kitchen-6aafeae6"
    sbatch = [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert sbatch == [
        "--job-name=pytrain-task-12", "--comment=pytrain:task=12:uid=6aafeae6-d049-4acd-9689-bf8a41e62fde:worker=login1-cpu",
        "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--cpus-per-task=64", "--mem=512G", "--partition=gpu",
        "--account=lab", "--qos=high", "--time=60", f"--chdir={task_dir}", f"--output={task_dir}/train.log",
        "--open-mode=append", "--no-requeue", "--exclusive", "--constraint=h100",
    ]
    assert (f"'--container-image=nvcr.io#nvidia/pytorch:24.10-py3' --container-mounts={tmp_path}/sources:{tmp_path}/sources:ro,"
            f"{task_dir}:{task_dir},{settings.torch_home}:{settings.torch_home}:ro --container-workdir={task_dir} --no-container-mount-home bash -c \"$node_command\"") in script
    assert ("exec python -m torch.distributed.run --nnodes=$SLURM_JOB_NUM_NODES --nproc-per-node=8 --rdzv-backend=c10d "
            "--rdzv-id=$SLURM_JOB_ID --rdzv-endpoint=$PYTRAIN_RDZV_ENDPOINT --rdzv-conf=is_host=$is_host -m pytrain.training") in script
    # The script is valid bash (syntax only: it is not run here).
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_a_tasks_own_slurm_options_override_the_settings(tmp_path):
    task = _task(tmp_path, 2, options={"slurm": {"partition": "h100", "gpus_per_node": 4, "extra_sbatch": "--exclusive"}, "cache": True})
    script = render_sbatch(task, task_settings(Settings(slurm_partition="gpu", slurm_mem="64G"), task), worker_id="w")
    sbatch = [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]
    assert {"--partition=h100", "--gpus-per-node=4", "--mem=64G", "--exclusive"} <= set(sbatch) and "--partition=gpu" not in sbatch
    assert "--nproc-per-node=4" in script
    with pytest.raises(ConfigurationError, match=r"slurm.gpus_per_node='4'"):
        task_settings(Settings(), _task(tmp_path, 1, options={"slurm": {"gpus_per_node": "4"}}))
    with pytest.raises(ConfigurationError, match=r"slurm.python is not a Slurm setting"):
        task_settings(Settings(), _task(tmp_path, 1, options={"slurm": {"python": "/usr/bin/python3"}}))


def test_bad_extra_sbatch_lines_and_zero_nodes_are_refused_naming_the_value(tmp_path):
    with pytest.raises(ConfigurationError, match="the settings: Slurm setting extra_sbatch='exclusive' item 'exclusive' is not --name"):
        SlurmRunner(Settings().model_copy(update={"slurm_extra_sbatch": "exclusive"}))  # model_copy skips validation
    with pytest.raises(ConfigurationError, match="nodes = 0"):
        render_sbatch(_task(tmp_path, 0), Settings(), worker_id="w")


def test_only_a_cluster_runner_takes_more_than_one_node(tmp_path):
    check_nodes(LocalRunner(Settings()), _task(tmp_path, 1))
    with pytest.raises(ConfigurationError, match="task 12 asks for nodes = 2, but the local runner trains on one host") as raised:
        check_nodes(LocalRunner(Settings()), _task(tmp_path, 2))
    assert "PYTRAIN_RUNNER=slurm" in str(raised.value.hint)
    check_nodes(SlurmRunner(Settings()), _task(tmp_path, 2))  # no error


def test_a_controller_that_does_not_answer_is_waited_out_and_a_forgotten_job_is_not(tmp_path):
    """scontrol failing for another reason than 'Invalid job id' (slurmctld restarting) means "still
    running, look again"; only a job Slurm no longer knows ends the wait. (Seen for real: slurmctld
    stopped for 5 s during a 12 s job, which then ended COMPLETED.)"""
    from pytrain.errors import RunnerError
    from pytrain.runners.slurm import _SlurmJob

    class Restarting:
        answers = [RunnerError("scontrol show job 5 failed: Unable to contact slurm controller"), None]

        def job(self, job_id):
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    handle = _SlurmJob(Restarting(), "5", tmp_path / "train.log", poll_seconds=0.01)
    assert handle.wait(0) is None and not handle.gone  # the controller did not answer: keep waiting
    assert handle.wait(0) == 1 and handle.gone  # Slurm forgot the job: its end is unknown


# -- values that would inject into the script: refused three times (docs/adr/0009, "Values in the script") --
VALID = {"partition": "gpu", "account": "lab", "qos": "high", "mem": "200G", "container_image": "nvcr.io#nvidia/pytorch:24.10-py3",
         "extra_sbatch": "--constraint=h100"}
# '#' is part of a pyxis image reference (registry#image), and the image is one quoted word of srun's line.
HOSTILE_CASES = [(key, case) for key in VALID for case in HOSTILE_SUFFIXES if (key, case) != ("container_image", "hash")]


@pytest.mark.parametrize(("key", "case"), HOSTILE_CASES, ids=[f"{key}-{case}" for key, case in HOSTILE_CASES])
def test_a_hostile_slurm_value_is_refused_by_settings_task_options_and_the_renderer(tmp_path, key, case):
    from pydantic import ValidationError

    from pytrain.task_options import check_options

    value = VALID[key] + HOSTILE_SUFFIXES[case]
    with pytest.raises(ValidationError, match=rf"slurm_{key}\n  Value error, "):
        Settings(**{f"slurm_{key}": value})  # PYTRAIN_SLURM_<KEY>
    with pytest.raises(ConfigurationError, match=re.escape(f"task option slurm.{key}={value!r}: ")):
        check_options({"slurm": {key: value}})  # pytrain submit and the claim
    with pytest.raises(ConfigurationError, match=re.escape(f"task 12: Slurm setting {key}={value!r} ")):
        render_sbatch(_task(tmp_path, 1), Settings().model_copy(update={f"slurm_{key}": value}), worker_id="w")
    assert not list(tmp_path.rglob("*.sbatch"))


@pytest.mark.parametrize("case", HOSTILE_SUFFIXES)
def test_a_hostile_python_is_refused_by_the_settings_and_the_renderer(tmp_path, case):
    """PYTRAIN_SLURM_PYTHON is not per task (options.slurm cannot set it), but it is written into the script too."""
    from pydantic import ValidationError

    value = "/opt/venv/bin/python" + HOSTILE_SUFFIXES[case]
    with pytest.raises(ValidationError, match=r"slurm_python\n  Value error, must be a command name or a path"):
        Settings(slurm_python=value)
    with pytest.raises(ConfigurationError, match=re.escape(f"task 12: Slurm setting python={value!r} must be")):
        render_sbatch(_task(tmp_path, 1), Settings().model_copy(update={"slurm_python": value}), worker_id="w")


def test_valid_slurm_values_pass_every_check():
    from pytrain.task_options import check_options

    values = {"partition": "h100,a100", "account": "vision-lab", "qos": "normal", "mem": "512M", "python": "/opt/venv/bin/python3.11",
              "container_image": "/shared/images/pytrain-train.sqsh", "extra_sbatch": "--exclusive;--constraint=[rack1|rack2]&a100"}
    assert Settings(**{f"slurm_{key}": value for key, value in values.items()}).slurm_mem == "512M"
    check_options({"slurm": {key: value for key, value in values.items() if key != "python"}})
    for bad in ("200GB", "-1G", "G", "2.5G"):
        with pytest.raises(ConfigurationError, match="must be a memory size"):
            check_options({"slurm": {"mem": bad}})
    with pytest.raises(ConfigurationError, match="must be a Slurm partition name"):
        check_options({"slurm": {"partition": "-gpu"}})  # would read as an option


def test_extra_sbatch_takes_resource_options_one_word_each():
    from pytrain.slurm_values import parse_extra_sbatch

    assert parse_extra_sbatch("--exclusive; --constraint=[rack1|rack2]&a100\n--gres=gpu:a100:2;;--time=1-00:00:00") == [
        "--exclusive", "--constraint=[rack1|rack2]&a100", "--gres=gpu:a100:2", "--time=1-00:00:00"]
    assert parse_extra_sbatch(None) == [] and parse_extra_sbatch(" ; ") == []
    for bad, why in [
        ("exclusive", "is not --name or --name=value"), ("-N 2", "is not --name or --name=value"),
        ("#SBATCH --exclusive", "is not --name or --name=value"), ("--constraint='a b'", "is not --name or --name=value"),
        ("--nodelist=/etc/nodes", "is not --name or --name=value"),  # sbatch reads a nodelist with '/' as a file
        ("--output=x", "--output is not an option PyTrain passes to sbatch"), ("--wrap=id", "--wrap is not an option"),
        ("--export=ALL", "--export is not an option"), ("--chdir=x", "--chdir is not an option"),
        ("--comment=x", "--comment is not an option"),  # the runner finds its jobs by their comment
    ]:
        with pytest.raises(ValueError, match=re.escape(f"item {bad!r}") + ".*" + re.escape(why)):
            parse_extra_sbatch(bad)


def test_the_renderer_refuses_paths_names_and_lines_it_cannot_write_as_one_word(tmp_path):
    with pytest.raises(ConfigurationError, match="task 12: the task folder .*my tasks.* cannot be written into slurm.sbatch"):
        render_sbatch(_task(tmp_path / "my tasks", 1), Settings(), worker_id="w")
    with pytest.raises(ConfigurationError, match="task 12: the weights folder .*a,b.* cannot be written into slurm.sbatch"):
        render_sbatch(_task(tmp_path, 1), Settings(slurm_container_image="img.sqsh", torch_home=tmp_path / "a,b"), worker_id="w")
    task = _task(tmp_path, 1)
    named = PreparedTask(spec=TaskSpec(task_id=12, model_name="kitchen\nrm -rf ~", class_list=["a", "b"]), task_dir=task.task_dir,
                         sources_root=task.sources_root, timeout_seconds=None)
    with pytest.raises(ConfigurationError, match=r"task 12: model name 'kitchen\\nrm -rf ~' does not match"):
        render_sbatch(named, Settings(), worker_id="w")
    # Defence in depth: a value no rule covers (the uid, from task.json) still cannot add an option.
    odd_uid = PreparedTask(spec=TaskSpec(task_id=12, model_name="kitchen", class_list=["a", "b"], uid="x --output=/tmp/y"),
                           task_dir=task.task_dir, sources_root=task.sources_root, timeout_seconds=None)
    with pytest.raises(ConfigurationError, match=r"task 12: refusing to write '#SBATCH --comment=pytrain:task=12:uid=x --output=/tmp/y"):
        render_sbatch(odd_uid, Settings(), worker_id="w")


# -- a job being cancelled is not re-attached to --------------------------------------------------
class _Squeue(SlurmCluster):
    """squeue as a list of answers (one per look; the last one stays): the task's job in a state, or gone (None)."""

    def __init__(self, *states: str | None) -> None:
        super().__init__()
        self.states = list(states)
        self.looks = 0

    def jobs(self, name_prefix: str = "pytrain-task-") -> list[JobInfo]:
        self.looks += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        comment = job_comment(12, "6aafeae6-d049-4acd-9689-bf8a41e62fde", "fenced-worker")
        return [] if state is None else [JobInfo("7", state, name="pytrain-task-12", comment=comment)]


def test_find_run_waits_out_a_job_being_cancelled_and_reattaches_only_to_a_live_one(tmp_path, monkeypatch):
    from pytrain.errors import RunnerError
    from pytrain.runners import slurm

    task = _task(tmp_path, 1)
    assert SlurmRunner(Settings(), cluster=_Squeue("RUNNING")).find_run(task) == "7"
    assert SlurmRunner(Settings(), cluster=_Squeue("PENDING")).find_run(task) == "7"
    # scancel by a fenced worker: COMPLETING at once, for as long as the steps take to die; then gone.
    squeue = _Squeue("COMPLETING", "COMPLETING", "CANCELLED", None)
    assert SlurmRunner(Settings(), cluster=squeue).find_run(task) is None
    assert squeue.looks == 4  # it waited until the job left the queue
    monkeypatch.setattr(slurm, "GONE_SECONDS", 0.3)
    with pytest.raises(RunnerError, match="task 12: Slurm job.s. 7 of this task are still ending 0.3 s after they were cancelled"):
        SlurmRunner(Settings(), cluster=_Squeue("COMPLETING"), grace_seconds=0).find_run(task)
