"""publish_task: layout, version numbering under concurrency, atomicity, failures."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from fixtures.triton import make_task_folder, task_record
from pytrain.errors import PublishError
from pytrain.publish import existing_versions, publish_task
from pytrain.publish.triton_config import parse_pbtxt
from pytrain.serving import free_port
from pytrain.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def visible_versions(settings: Settings, model: str = "kitchen") -> list[int]:
    return existing_versions(settings.model_repo_dir / model)


def assert_complete(version_dir: Path, source_onnx: Path) -> None:
    # The version describes itself: its own labels, tensor spec and INI beside the model.
    assert sorted(p.name for p in version_dir.iterdir() if p.name != "__pycache__") == [
        "kitchen.config", "labels.txt", "model.onnx", "model.py", "tensor_spec.json"
    ]
    assert (version_dir / "model.onnx").read_bytes() == source_onnx.read_bytes()


def test_publish_writes_the_repository_layout_and_results(task_folder: Path, repo_settings: Settings) -> None:
    published = publish_task(task_folder, settings=repo_settings, task_record=task_record(created_at=None))

    model_dir = repo_settings.model_repo_dir / "kitchen"
    assert (published.name, published.version, published.path) == ("kitchen", 1, model_dir / "1")
    assert_complete(model_dir / "1", task_folder / "model.onnx")
    assert parse_pbtxt((model_dir / "config.pbtxt").read_text()).platform == "onnxruntime_onnx"
    assert parse_pbtxt((model_dir / "configs" / "cpu.pbtxt").read_text()).backend == "python"
    assert (model_dir / "labels.txt").read_text() == "cooking\ndrinking\neating\nwalking\n"
    assert (model_dir / "kitchen.config").read_text().startswith("[PREDICTION]\nnum_frames = 8\n")
    assert "epochs = 3\nshuffle_size = 300\nbatch_size = 4\n" in (model_dir / "kitchen.config").read_text()

    results = repo_settings.results_dir / "kitchen" / "1"
    assert published.results_path == results
    assert sorted(p.name for p in results.iterdir()) == sorted(
        ["metrics.json", "skipped.json", "tensor_spec.json", "history.png", "confusion_train.png", "confusion_test.png", "task.json"]
    )
    assert json.loads((results / "task.json").read_text()) == task_record(created_at=None)
    assert json.loads((results / "skipped.json").read_text()) == [{"path": "bad.mp4", "reason": "empty"}]
    # Staging leaves nothing behind beside the repository.
    assert not (repo_settings.model_repo_dir.parent / ".model_repo.staging").exists()


def test_each_publish_gets_the_next_integer_version(task_folder: Path, repo_settings: Settings) -> None:
    versions = [publish_task(task_folder, settings=repo_settings, task_record=task_record()).version for _ in range(3)]
    assert versions == [1, 2, 3]
    assert visible_versions(repo_settings) == [1, 2, 3]


def test_a_removed_version_number_is_not_reused(task_folder: Path, repo_settings: Settings) -> None:
    for _ in range(2):
        publish_task(task_folder, settings=repo_settings, task_record=task_record())
    shutil.rmtree(repo_settings.model_repo_dir / "kitchen" / "2")
    assert publish_task(task_folder, settings=repo_settings, task_record=task_record()).version == 3


def test_concurrent_publishing_threads_never_share_a_version(task_folder: Path, repo_settings: Settings) -> None:
    barrier = threading.Barrier(6)
    versions: list[int] = []
    errors: list[BaseException] = []

    def publish_one() -> None:
        try:
            barrier.wait()
            versions.append(publish_task(task_folder, settings=repo_settings, task_record=task_record()).version)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=publish_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    assert visible_versions(repo_settings) == [1, 2, 3, 4, 5, 6]
    for v in versions:
        assert_complete(repo_settings.model_repo_dir / "kitchen" / str(v), task_folder / "model.onnx")


def _publish_in_process(task_dir: str, repo: str, results: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    settings = Settings(model_repo_dir=repo, results_dir=results, triton_grpc_url=None)
    start.wait(30)
    out.put(publish_task(Path(task_dir), settings=settings, task_record=task_record()).version)


def test_concurrent_publishing_processes_never_share_a_version(task_folder: Path, repo_settings: Settings) -> None:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    args = (str(task_folder), str(repo_settings.model_repo_dir), str(repo_settings.results_dir), start, out)
    processes = [ctx.Process(target=_publish_in_process, args=args) for _ in range(4)]
    for p in processes:
        p.start()
    start.set()
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    assert sorted(out.get(timeout=5) for _ in processes) == [1, 2, 3, 4]
    assert visible_versions(repo_settings) == [1, 2, 3, 4]


def test_a_publish_failing_before_the_rename_leaves_no_version_and_restores_configs(task_folder: Path, repo_settings: Settings, tmp_path: Path) -> None:
    publish_task(task_folder, settings=repo_settings, task_record=task_record())
    model_dir = repo_settings.model_repo_dir / "kitchen"
    before = {p: p.read_bytes() for p in [model_dir / "config.pbtxt", model_dir / "kitchen.config", model_dir / "labels.txt"]}
    other = make_task_folder(tmp_path / "other", class_list=["a", "b"], epochs=9)

    def crash(staged: Path, version: int) -> None:
        assert (staged / "model.onnx").is_file() and version == 2
        raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        publish_task(other, settings=repo_settings, task_record=task_record(), _before_rename=crash)

    assert visible_versions(repo_settings) == [1]
    assert {p: p.read_bytes() for p in before} == before
    assert not (repo_settings.results_dir / "kitchen" / "2").exists()
    assert publish_task(task_folder, settings=repo_settings, task_record=task_record()).version == 2


def test_a_publisher_killed_midway_leaves_no_visible_version(task_folder: Path, repo_settings: Settings) -> None:
    publish_task(task_folder, settings=repo_settings, task_record=task_record())
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO_ROOT / 'tests')!r})
        from pathlib import Path
        from fixtures.triton import task_record
        from pytrain.publish import publish_task
        from pytrain.settings import Settings
        settings = Settings(model_repo_dir={str(repo_settings.model_repo_dir)!r}, results_dir={str(repo_settings.results_dir)!r})
        def die(staged, version):
            os.kill(os.getpid(), 9)   # as if the machine stopped right before the rename
        publish_task(Path({str(task_folder)!r}), settings=settings, task_record=task_record(), _before_rename=die)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr

    assert visible_versions(repo_settings) == [1]
    assert_complete(repo_settings.model_repo_dir / "kitchen" / "1", task_folder / "model.onnx")
    # The half-built version lies outside the repository, where Triton never looks.
    leftovers = list((repo_settings.model_repo_dir.parent / ".model_repo.staging").iterdir())
    assert len(leftovers) == 1 and (leftovers[0] / "model.onnx").is_file()
    assert publish_task(task_folder, settings=repo_settings, task_record=task_record()).version == 2


def test_missing_onnx_model_raises_and_writes_nothing(task_folder: Path, repo_settings: Settings) -> None:
    (task_folder / "model.onnx").unlink()
    with pytest.raises(PublishError, match="no model.onnx"):
        publish_task(task_folder, settings=repo_settings, task_record=task_record())
    assert not (repo_settings.model_repo_dir / "kitchen").exists()


def test_missing_tensor_spec_raises(task_folder: Path, repo_settings: Settings) -> None:
    (task_folder / "tensor_spec.json").unlink()
    with pytest.raises(PublishError, match="no tensor spec"):
        publish_task(task_folder, settings=repo_settings, task_record=task_record())


def test_tensor_names_not_in_the_onnx_graph_are_rejected(task_folder: Path, repo_settings: Settings) -> None:
    spec = json.loads((task_folder / "tensor_spec.json").read_text())
    spec["input_name"] = "frames"
    (task_folder / "tensor_spec.json").write_text(json.dumps(spec))
    with pytest.raises(PublishError, match="'frames'"):
        publish_task(task_folder, settings=repo_settings, task_record=task_record())
    assert visible_versions(repo_settings) == []


@pytest.mark.parametrize("name", ["../evil", "has space", "x" * 65])
def test_invalid_model_names_are_rejected(task_folder: Path, repo_settings: Settings, name: str) -> None:
    with pytest.raises(PublishError, match="not a valid Triton model name"):
        publish_task(task_folder, settings=repo_settings, task_record=task_record(model_name=name))


def test_an_unreachable_triton_does_not_fail_the_publish(task_folder: Path, repo_settings: Settings) -> None:
    settings = repo_settings.model_copy(update={"triton_grpc_url": f"127.0.0.1:{free_port()}"})
    published = publish_task(task_folder, settings=settings, task_record=task_record())
    assert published.version == 1
    assert published.load_requested is False
    assert "127.0.0.1" in published.load_message


def test_a_retry_of_one_run_finds_its_version_and_a_run_of_another_database_with_the_same_ids_does_not(
        task_folder: Path, repo_settings: Settings) -> None:
    """Publishing is idempotent per run, keyed by the task's uid and the run id: ids start again at 1
    in a new database, so a model repository that outlived its database must not hand a new run
    the version of an old one."""
    run = task_record(task_id=1, run_id=1, uid="6f1c7a52-0000-4000-8000-000000000001")
    assert publish_task(task_folder, settings=repo_settings, task_record=run).version == 1
    assert publish_task(task_folder, settings=repo_settings, task_record=run).version == 1  # the retry: the same version
    reset_database = task_record(task_id=1, run_id=1, uid="0b7d9e13-0000-4000-8000-000000000002")
    assert publish_task(task_folder, settings=repo_settings, task_record=reset_database).version == 2
    assert visible_versions(repo_settings) == [1, 2]


def test_the_gate_surrounds_placing_only_and_triton_is_asked_to_load_after_it(task_folder: Path, repo_settings: Settings,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import contextmanager

    from pytrain.publish import loader

    settings = repo_settings.model_copy(update={"triton_grpc_url": "127.0.0.1:1"})
    events: list[str] = []
    monkeypatch.setattr(loader, "request_load", lambda url, model, **_: events.append("load") or (True, ""))

    @contextmanager
    def gate():
        events.append(f"enter: {existing_versions(settings.model_repo_dir / 'kitchen')}")  # staged, nothing placed yet
        yield lambda published: events.append(f"record {published.version}")
        events.append("commit")

    publish_task(task_folder, settings=settings, task_record=task_record(run_id=3, uid="u-1"), gate=gate)
    assert events == ["enter: []", "record 1", "commit", "load"]


def test_a_gate_that_refuses_places_nothing(task_folder: Path, repo_settings: Settings) -> None:
    from contextlib import contextmanager

    @contextmanager
    def refuse():
        raise PublishError("the run no longer holds the task")
        yield  # pragma: no cover

    with pytest.raises(PublishError, match="no longer holds"):
        publish_task(task_folder, settings=repo_settings, task_record=task_record(), gate=refuse)
    assert visible_versions(repo_settings) == []
    assert not (repo_settings.model_repo_dir / "kitchen" / "history.jsonl").exists()


def test_publish_cli_prints_the_version(task_folder: Path, repo_settings: Settings) -> None:
    env = {**os.environ, "PYTRAIN_MODEL_REPO_DIR": str(repo_settings.model_repo_dir), "PYTRAIN_RESULTS_DIR": str(repo_settings.results_dir)}
    env.pop("PYTRAIN_TRITON_GRPC_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytrain.cli.main", "publish", "--task-dir", str(task_folder)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert (line["model"], line["version"]) == ("kitchen", 1)


def test_publishing_a_folder_that_is_not_a_task_folder_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "sources"
    folder.mkdir()
    settings = Settings(model_repo_dir=tmp_path / "model_repo", results_dir=tmp_path / "results")
    with pytest.raises(PublishError) as caught:
        publish_task(folder, settings=settings, task_record={})
    assert str(caught.value) == (
        f"{folder} has no task.json, so it is not a task folder and names no model "
        "(hint: pass a finished task folder model_tasks/task-<id>-<model>/)"
    )
    assert not (tmp_path / "model_repo").exists() or list((tmp_path / "model_repo").iterdir()) == []


def test_a_class_name_with_a_percent_sign_round_trips_through_the_ini(tmp_path: Path, repo_settings: Settings) -> None:
    """``<model>.config`` values are literal: ``%`` is not configparser interpolation."""
    from pytrain.client import ModelInfo

    classes = ["50%_off", "cooking", "%(user)s"]
    task_dir = make_task_folder(tmp_path / "task", class_list=classes)
    published = publish_task(task_dir, settings=repo_settings, task_record=task_record())

    for config in (published.path.parent / "kitchen.config", published.path / "kitchen.config"):
        info = ModelInfo.from_pytrain_config(config)
        assert info.spec.class_list == classes and info.name == "kitchen"
