"""CLI tables print every value in full when stdout is not a terminal (a pipe, a file, this test's
capture): rich fitted them to 80 columns (200 for ``pytrain tasks``) and cut long model names to
``kitchen_ve…``. The real CLI in-process, a real PostgreSQL and a real published model."""

from __future__ import annotations

import sys

from fixtures.triton import make_task_folder, task_record
from orchestrator.test_cli import cli  # noqa: F401 -- the in-process CLI fixture
from pytrain.db import TaskQueue
from pytrain.publish import publish_task

LONG_MODEL = "kitchen_very_long_model_name_for_the_camera_over_the_stove_01"  # 62 characters
LONG_CLASSES = ["cooking_on_the_left_burner_of_the_stove", "drinking_water_from_a_glass_at_the_sink", "eating_at_the_table"]


def test_models_prints_long_names_in_full_when_piped(cli, settings, tmp_path):
    assert not sys.stdout.isatty()
    task_dir = make_task_folder(tmp_path / "task", model_name=LONG_MODEL, class_list=LONG_CLASSES)
    publish_task(task_dir, settings=settings.model_copy(update={"triton_grpc_url": None}), task_record=task_record(LONG_MODEL))

    code, out, err = cli("models")

    assert code == 0, err
    (row,) = [line for line in out.splitlines() if LONG_MODEL in line]
    assert ",".join(LONG_CLASSES) in row and "…" not in out


def test_tasks_prints_long_values_in_full_when_piped(cli, engine, synced, settings):
    queue = TaskQueue(engine)
    queue.submit({"model_name": LONG_MODEL, "sources": ["dataset1"], "classes": ["cooking", "drinking"]})
    worker = "gpu-host-in-the-second-rack-of-the-basement-server-room-gpu0_1_2_3"
    run = queue.claim(worker, 30)
    error = "training exited with code 3: ValueError: the manifest names no clip"
    assert queue.finish(run, "failed", error=error)

    code, out, err = cli("tasks")

    assert code == 0, err
    (row,) = [line for line in out.splitlines() if LONG_MODEL in line]
    assert worker in row and error[:60] in row and "…" not in out
