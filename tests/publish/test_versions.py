"""Versions users can trust (issue 10), on the session's real Triton: each served version answers with
its own labels and clip size, rollback serves an older version with its own files, and a reload
Triton refuses leaves the previous version serving."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fixtures.triton import TEST_CLASSES, _class_colours, make_task_folder, task_record
from pytrain.errors import PublishError
from pytrain.publish import publish_task, versions
from pytrain.publish.triton_config import parse_pbtxt
from pytrain.settings import Settings

pytestmark = pytest.mark.triton
THREE = ["cooking", "drinking", "eating"]


def publish(settings: Settings, tmp_path: Path, model: str, task_id: int, **folder: object):
    task_dir = make_task_folder(tmp_path / f"task-{task_id}", model_name=model, task_id=task_id, **folder)
    return publish_task(task_dir, settings=settings, task_record=task_record(model, task_id))


def coloured_clips(classes: list[str], frames: int = 8, size: int = 32) -> np.ndarray:
    """``(C, T, H, W, 3)`` uint8: one clip per class, filled with the class's colour (what the test model detects)."""
    colours = np.round(_class_colours(classes) * 255).astype(np.uint8)
    return np.broadcast_to(colours[:, None, None, None, :], (len(classes), frames, size, size, 3)).copy()


def answers(url: str, model: str, clips: np.ndarray, version: str = "", k: int = 5) -> tuple[str, list[list[str]]]:
    """``(the version that answered, top-k labels per clip)`` from Triton's classification extension."""
    import tritonclient.grpc as grpcclient

    from pytrain.serving.control import inference_headers

    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("time_distributed_input", list(clips.shape), "UINT8")
        tensor.set_data_from_numpy(clips)
        result = client.infer(model, [tensor], model_version=version, headers=inference_headers() or None,
                              outputs=[grpcclient.InferRequestedOutput("dense", class_count=k)], client_timeout=30)
    rows = [[item.decode().split(":", 2)[-1] for item in row] for row in result.as_numpy("dense")]
    return result.get_response().model_version, rows


def ready(url: str, model: str, version: int) -> bool:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        return client.is_model_ready(model, str(version))


def served_in_config(settings: Settings, model: str) -> list[int]:
    model_dir = settings.model_repo_dir / model
    gpu = parse_pbtxt((model_dir / "config.pbtxt").read_text()).version_policy.specific.versions
    cpu = parse_pbtxt((model_dir / "configs" / "cpu.pbtxt").read_text()).version_policy.specific.versions
    assert list(gpu) == list(cpu)
    return list(gpu)


def test_a_version_with_other_classes_is_served_alone_and_rollback_serves_the_old_one_with_its_labels(
    triton_settings: Settings, tmp_path: Path
) -> None:
    url, model = triton_settings.triton_grpc_url, "v_classes"
    first = publish(triton_settings, tmp_path, model, 1)
    second = publish(triton_settings, tmp_path, model, 2, class_list=THREE)

    assert (first.served_versions, first.serving_note) == ((1,), "")
    assert second.served_versions == (2,) and "changes the classes" in second.serving_note and "rollback v_classes 1" in second.serving_note
    assert second.load_requested is True
    assert served_in_config(triton_settings, model) == [2]
    assert ready(url, model, 2) and not ready(url, model, 1)
    # Every answer names a real class of the version that gave it: no index without a label, no cut top-k.
    version, rows = answers(url, model, coloured_clips(THREE))
    assert version == "2" and [r[0] for r in rows] == THREE and all(sorted(r) == THREE for r in rows)
    model_dir = triton_settings.model_repo_dir / model
    assert (model_dir / "labels.txt").read_text() == "".join(f"{c}\n" for c in THREE)
    assert (model_dir / "1" / "labels.txt").read_text() == "".join(f"{c}\n" for c in TEST_CLASSES)

    change = versions.rollback(model, settings=triton_settings, url=url)  # default: the newest older version

    assert (change.version, change.served, change.previous, change.reloaded) == (1, [1], [2], True)
    assert served_in_config(triton_settings, model) == [1]
    assert ready(url, model, 1) and not ready(url, model, 2)
    version, rows = answers(url, model, coloured_clips(TEST_CLASSES))
    assert version == "1" and [r[0] for r in rows] == TEST_CLASSES and all(sorted(r) == TEST_CLASSES for r in rows)
    assert (model_dir / "labels.txt").read_text() == (model_dir / "1" / "labels.txt").read_text()
    assert (model_dir / f"{model}.config").read_text() == (model_dir / "1" / f"{model}.config").read_text()
    history = versions.read_history(model_dir)
    assert [(r.event, r.version, r.served, r.previous, r.task_id) for r in history] == [
        ("publish", 1, [1], [], 1), ("publish", 2, [2], [1], 2), ("rollback", 1, [1], [2], None)
    ]
    rows = versions.list_versions(triton_settings, model)
    assert [(r.version, r.task_id, r.classes, r.clip, r.served) for r in rows] == [
        (1, 1, TEST_CLASSES, "8x32x32", True), (2, 2, THREE, "8x32x32", False)
    ]
    states = versions.live_states(url, settings=triton_settings)
    assert states[(model, 1)] == "READY" and states[(model, 2)].split(":")[0] in ("UNLOADING", "UNAVAILABLE")


def test_a_version_with_another_clip_size_is_served_alone_and_rollback_restores_the_old_size(
    triton_settings: Settings, tmp_path: Path
) -> None:
    url, model = triton_settings.triton_grpc_url, "v_clip"
    publish(triton_settings, tmp_path, model, 1)
    publish(triton_settings, tmp_path, model, 2)  # same spec: both served
    assert served_in_config(triton_settings, model) == [1, 2]
    third = publish(triton_settings, tmp_path, model, 3, num_frames=4, height=16, width=16)

    assert third.served_versions == (3,) and "clip 8x32x32 -> classes" in third.serving_note and "clip 4x16x16" in third.serving_note
    assert ready(url, model, 3) and not ready(url, model, 2) and not ready(url, model, 1)
    assert answers(url, model, coloured_clips(TEST_CLASSES, frames=4, size=16))[1][3][0] == "walking"

    change = versions.rollback(model, 2, settings=triton_settings, url=url)

    assert (change.served, change.previous) == ([1, 2], [3])
    assert ready(url, model, 2) and ready(url, model, 1) and not ready(url, model, 3)
    version, rows = answers(url, model, coloured_clips(TEST_CLASSES))
    assert version == "2" and [r[0] for r in rows] == TEST_CLASSES


def test_rollback_while_a_client_sends_requests_never_answers_with_a_wrong_label(
    triton_settings: Settings, tmp_path: Path
) -> None:
    url, model = triton_settings.triton_grpc_url, "v_load"
    publish(triton_settings, tmp_path, model, 1)
    publish(triton_settings, tmp_path, model, 2, class_list=THREE)
    clips = coloured_clips(TEST_CLASSES)
    outcomes: Counter[str] = Counter()
    wrong: list[tuple[str, list[list[str]]]] = []
    unavailable: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                version, rows = answers(url, model, clips, k=1)
            except Exception as exc:  # counted by kind; only "unavailable" during a reload is allowed
                text = " ".join(str(exc).split())
                kind = "unavailable" if "unavailable" in text.lower() or "not found" in text.lower() else f"error: {text}"
                outcomes[kind] += 1
                unavailable.append(text)
                continue
            outcomes[f"v{version}"] += 1
            # Both know cooking, drinking, eating; only v1 knows walking (v2 answers its nearest class).
            last = ["walking"] if version == "1" else THREE
            if [r[0] for r in rows[:3]] != THREE or rows[3][0] not in last:
                wrong.append((version, rows))

    client = threading.Thread(target=loop)
    client.start()
    try:
        for target in (1, 2, 1, 2):
            time.sleep(0.3)
            versions.rollback(model, target, settings=triton_settings, url=url)
        time.sleep(0.3)
    finally:
        stop.set()
        client.join(30)
    print(f"rollback under load: {dict(outcomes)}; first failure: {unavailable[:1]}")
    assert wrong == []
    assert outcomes["v1"] > 0 and outcomes["v2"] > 0
    assert set(outcomes) <= {"v1", "v2", "unavailable"}, outcomes


def test_a_config_triton_refuses_on_rollback_leaves_the_previous_version_serving(
    triton_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, model = triton_settings.triton_grpc_url, "v_broken"
    publish(triton_settings, tmp_path, model, 1)
    publish(triton_settings, tmp_path, model, 2, class_list=THREE)
    model_dir = triton_settings.model_repo_dir / model
    before = {p: p.read_bytes() for p in [model_dir / "config.pbtxt", model_dir / "configs" / "cpu.pbtxt", model_dir / "labels.txt"]}
    real_model_files = versions.model_files

    def broken(*args: object, **kwargs: object) -> dict[str, str]:  # valid protobuf, but no such backend
        files = real_model_files(*args, **kwargs)
        files[versions.CPU_CONFIG_FILE] = files[versions.CPU_CONFIG_FILE].replace('backend: "python"', 'backend: "no_such_backend"')
        return files

    monkeypatch.setattr(versions, "model_files", broken)
    with pytest.raises(PublishError, match="rollback to version 1 was not applied.*previous config keeps serving"):
        versions.rollback(model, 1, settings=triton_settings, url=url)

    assert {p: p.read_bytes() for p in before} == before
    assert ready(url, model, 2) and not ready(url, model, 1)
    version, rows = answers(url, model, coloured_clips(THREE))
    assert version == "2" and [r[0] for r in rows] == THREE
    assert [r.event for r in versions.read_history(model_dir)] == ["publish", "publish"]


def test_unpublish_refuses_the_only_served_version_and_removes_an_unserved_one(repo_settings: Settings, tmp_path: Path) -> None:
    model = "kitchen"
    for task_id, classes in ((1, TEST_CLASSES), (2, THREE), (3, THREE)):
        publish(repo_settings, tmp_path, model, task_id, class_list=classes)
    assert served_in_config(repo_settings, model) == [2, 3]
    versions.rollback(model, 2, settings=repo_settings)
    assert served_in_config(repo_settings, model) == [2]

    with pytest.raises(PublishError, match="only served version"):
        versions.unpublish(model, 2, settings=repo_settings)
    change = versions.unpublish(model, 1, settings=repo_settings)

    assert (change.served, versions.existing_versions(repo_settings.model_repo_dir / model)) == ([2], [2, 3])
    assert (repo_settings.results_dir / model / "1").is_dir()  # its number stays taken
    assert publish(repo_settings, tmp_path, model, 4).version == 4


def test_served_versions_are_the_newest_compatible_ones_up_to_the_limit(repo_settings: Settings, tmp_path: Path) -> None:
    settings = repo_settings.model_copy(update={"served_versions": 3})
    for task_id in range(1, 5):
        publish(settings, tmp_path, "kitchen", task_id)
    assert served_in_config(settings, "kitchen") == [2, 3, 4]
    record = versions.read_history(settings.model_repo_dir / "kitchen")[-1]
    assert versions.HistoryRecord.from_json(record.to_json()) == record


def test_models_and_rollback_commands(triton_settings: Settings, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    url, model = triton_settings.triton_grpc_url, "v_cli"
    publish(triton_settings, tmp_path, model, 1)
    publish(triton_settings, tmp_path, model, 2, class_list=THREE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    env.update(PYTRAIN_MODEL_REPO_DIR=str(triton_settings.model_repo_dir), PYTRAIN_RESULTS_DIR=str(triton_settings.results_dir),
               PYTRAIN_TRITON_CONTROL_KEY=triton_settings.triton_control_key.get_secret_value())

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytrain.cli.main", *args], capture_output=True, text=True, env=env, timeout=120)

    rolled = run("rollback", model, "--url", url)
    listed = run("models", model, "--url", url, "--json")
    missing = run("rollback", model, "7")

    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert json.loads(rolled.stdout)["served"] == [1]
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = {r["version"]: r for r in json.loads(listed.stdout)}
    assert (rows[1]["served"], rows[1]["state"], rows[1]["task_id"], rows[2]["served"]) == (True, "READY", 1, False)
    assert missing.returncode == 1 and "has no version 7" in missing.stderr and "existing versions: [1, 2]" in missing.stderr


def test_rolling_back_to_a_version_without_its_own_files_says_how_to_fix_it(repo_settings: Settings, tmp_path: Path) -> None:
    publish(repo_settings, tmp_path, "kitchen", 1)
    publish(repo_settings, tmp_path, "kitchen", 2, class_list=THREE)
    (repo_settings.model_repo_dir / "kitchen" / "1" / "kitchen.config").unlink()  # as an older PyTrain published it
    before = (repo_settings.model_repo_dir / "kitchen" / "config.pbtxt").read_bytes()

    with pytest.raises(PublishError, match="version 1 has no kitchen.config of its own.*republish its task folder"):
        versions.rollback("kitchen", 1, settings=repo_settings)
    assert (repo_settings.model_repo_dir / "kitchen" / "config.pbtxt").read_bytes() == before


def test_models_reads_the_task_row_and_metrics_of_a_version_also_under_the_old_task_json_name(
    repo_settings: Settings, tmp_path: Path
) -> None:
    model = "v_rows"
    publish(repo_settings, tmp_path, model, 5)
    (repo_settings.model_repo_dir / model / versions.HISTORY_FILE).unlink()  # the task id then comes from the results
    results = repo_settings.results_dir / model / "1"
    assert [(r.task_id, r.test_accuracy) for r in versions.list_versions(repo_settings, model)] == [(5, 1.0)]
    (results / "task_row.json").rename(results / "task.json")  # a version published before the file had its own name
    assert [r.task_id for r in versions.list_versions(repo_settings, model)] == [5]
    (results / "task.json").write_text("{not json")  # a damaged file: the version is listed without it
    (results / "metrics.json").write_text('{"test_accuracy": "high"}')
    assert [(r.task_id, r.test_accuracy) for r in versions.list_versions(repo_settings, model)] == [(None, None)]
