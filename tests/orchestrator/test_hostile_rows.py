"""Rows a careless or hostile user could INSERT, on the real PostgreSQL and a real orchestrator.

Each row is inserted with plain SQL (the public API, parameters bound). It is either refused by
the database (a CHECK constraint, or PostgreSQL's own rule that text holds no NUL byte) or claimed
and failed with an error naming the value; the worker never crashes, nothing is written outside
the normal task's folder, and the normal task queued after them all still runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fixtures.clips import write_tree
from fixtures.processes import communicate_or_kill, orchestrator_env
from orchestrator_fakes import LAYOUT, FakePublisher, FakeRunner
from pytrain.db import SourceRegistry, TaskQueue
from pytrain.orchestrator import Orchestrator
from pytrain.sources import sync_sources
from pytrain.sources.resolve import NOT_UTF8
from pytrain.spec import read_manifest, read_unlisted, task_dir_name
from test_local_runner import STUB

MB = "x" * 2**20
OK = {"model_name": "hostile", "sources": ["dataset1"], "classes": ["cooking", "drinking"]}
NOT_SOURCE = "is not a dataset folder name directly under the sources root"
NOT_CLASS = "is not the start of a class folder's name"

# (case, the row's columns over OK, what it gets: "refused: <why>" or the start of the row's error)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("model ../", {"model_name": "../evil"}, "refused: ck_training_tasks_model_name_format"),
    ("model /", {"model_name": "/"}, "refused: ck_training_tasks_model_name_format"),
    ("model NUL", {"model_name": "kit\x00chen"}, "refused: PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ("model newline", {"model_name": "kitchen\n"}, "refused: ck_training_tasks_model_name_format"),
    ("model emoji", {"model_name": "kitchen😀"}, "refused: ck_training_tasks_model_name_format"),
    ("model SQL", {"model_name": "x'); DROP TABLE training_tasks; --"}, "refused: ck_training_tasks_model_name_format"),
    ("model 1 MB", {"model_name": MB}, "refused: ck_training_tasks_model_name_format"),
    ("sources NULL", {"sources": ["dataset1", None]}, "refused: ck_training_tasks_sources_not_empty"),
    ("sources ../", {"sources": ["../dataset1"]}, f"sources entry '../dataset1' {NOT_SOURCE}"),
    ("sources /", {"sources": ["/etc"]}, f"sources entry '/etc' {NOT_SOURCE}"),
    ("sources NUL", {"sources": ["data\x00set1"]}, "refused: PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ("sources newline", {"sources": ["dataset1\n"]}, f"sources entry 'dataset1\\n' {NOT_SOURCE}"),
    ("sources emoji", {"sources": ["dataset😀"]}, f"sources entry 'dataset😀' {NOT_SOURCE}"),
    ("sources SQL", {"sources": ["d'; DROP TABLE sources; --"]}, "sources entry \"d'; DROP TABLE sources; --\" " + NOT_SOURCE),
    ("sources 1 MB", {"sources": [MB]}, "refused: ck_training_tasks_sources_within_limits"),
    ("sources twice", {"sources": ["dataset1", "dataset1"]}, "sources lists 'dataset1' twice"),
    ("sources symlink out", {"sources": ["escape"]}, "dataset 'escape' "),
    ("classes NULL", {"classes": ["cooking", None]}, "refused: ck_training_tasks_classes_not_empty"),
    ("classes 10,000", {"classes": [f"c{i}" for i in range(10_000)]}, "refused: ck_training_tasks_classes_within_limits"),
    ("classes 1 MB", {"classes": ["cooking", MB]}, "refused: ck_training_tasks_classes_within_limits"),
    ("classes 256 characters", {"classes": ["cooking", "c" * 256]}, f"classes entry '{'c' * 39}... (256 characters) {NOT_CLASS}"),
    ("classes ../", {"classes": ["../cooking", "drinking"]}, f"classes entry '../cooking' {NOT_CLASS}"),
    ("classes /", {"classes": ["/", "cooking"]}, f"classes entry '/' {NOT_CLASS}"),
    ("classes NUL", {"classes": ["cook\x00ing", "drinking"]}, "refused: PostgreSQL text fields cannot contain NUL (0x00) bytes"),
    ("classes newline", {"classes": ["cooking\n", "drinking"]}, f"classes entry 'cooking\\n' {NOT_CLASS}"),
    ("classes emoji", {"classes": ["🍳", "cooking"]}, "class(es) ['🍳'] have no folder in dataset(s) ['dataset1']"),
    ("classes SQL", {"classes": ["c'); DROP TABLE training_tasks; --", "cooking"]},
     "class(es) [\"c'); DROP TABLE training_tasks; --\"] have no folder"),
    ("classes twice", {"classes": ["cooking", "drinking", "cooking"]}, "classes lists 'cooking' twice"),
]


def _insert(engine: Any, row: dict[str, Any]) -> int | str:
    """INSERT the row; its id, or ``"refused: <constraint or PostgreSQL's reason>"``."""
    from sqlalchemy import exc, text

    try:
        with engine.begin() as conn:
            return int(conn.execute(
                text("INSERT INTO training_tasks (model_name, sources, classes, architecture) "
                     "VALUES (:model_name, :sources, :classes, 'tiny') RETURNING id"), row,
            ).scalar_one())
    except exc.DBAPIError as error:
        diag = getattr(error.orig, "diag", None)
        return f"refused: {getattr(diag, 'constraint_name', None) or str(error.orig).strip()}"


def _files(root: Path) -> set[Path]:
    return {Path(dirpath, name) for dirpath, dirnames, filenames in os.walk(root) for name in [*dirnames, *filenames]}


def test_hostile_rows_are_refused_or_fail_naming_the_value_and_the_next_task_runs(settings, engine, tmp_path):
    write_tree(settings.sources_dir, LAYOUT)
    outside = write_tree(tmp_path / "outside", {"stolen": {"cooking_x": 2, "drinking_y": 2}}) / "stolen"
    (settings.sources_dir / "escape").symlink_to(outside, target_is_directory=True)
    synced = sync_sources(settings, engine=engine, probe=False)  # placeholder files: registration only
    assert "escape" in synced.skipped and synced.registered == ["dataset1"]
    SourceRegistry(engine).register(["escape"])  # as if the symlink replaced a registered folder afterwards

    got = {case: _insert(engine, {**OK, **values}) for case, values, _ in CASES}
    queue = TaskQueue(engine)
    normal = queue.submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny"})
    before = _files(tmp_path)
    runner = FakeRunner()
    queued = [task_id for task_id in got.values() if isinstance(task_id, int)]
    assert Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher()).run(exit_when_idle=True) == len(queued) + 1

    assert runner.runs == [normal]  # no hostile row reached a runner
    for case, task_id in got.items():
        if isinstance(task_id, int):
            row = queue.get(task_id)
            assert row["status"] == "failed", (case, row["status"])
            got[case] = re.sub(rf"^cannot prepare task {task_id}: ", "", row["error"])
            assert len(row["error"]) < 600, case  # a 1 MB or 10,000-entry value is named, not copied
    assert {case: got[case][:len(expected)] for case, _, expected in CASES} == {case: expected for case, _, expected in CASES}
    assert "resolves to" in got["sources symlink out"] and "outside the sources root" in got["sources symlink out"]

    assert queue.get(normal)["status"] == "succeeded"
    task_dir = settings.model_tasks_dir / task_dir_name(normal, "kitchen", queue.get(normal).uid)
    assert {p for p in _files(tmp_path) - before if task_dir not in (p, *p.parents)} == set()
    assert sorted(p.name for p in settings.model_tasks_dir.iterdir()) == [task_dir.name]
    assert _files(outside.parent) == {outside, outside / "cooking_x", outside / "drinking_y",
                                      *(outside / f / f"clip_00{i}.mp4" for f in ("cooking_x", "drinking_y") for i in (0, 1))}
    assert SourceRegistry(engine).names() == ["dataset1", "escape"]  # the SQL fragments dropped nothing


# -- rows and files that used to stop the worker itself ------------------------------------------
WORKER = """
import sys
sys.path.insert(0, sys.argv[2])
from orchestrator_fakes import FakePublisher
from pytrain.orchestrator import Orchestrator
from pytrain.runners import LocalRunner
from pytrain.settings import Settings

settings = Settings()
runner = LocalRunner(settings, command=[sys.executable, sys.argv[1], "succeed"], grace_seconds=1.0)
print("tasks run:", Orchestrator(settings, runner=runner, publisher=FakePublisher()).run(exit_when_idle=True))
"""
TASK = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "tiny"}


def run_orchestrator_process(settings) -> tuple[int, str]:
    """A real ``pytrain`` worker process (LocalRunner on the stub training, fake publisher) until the
    queue is empty; its exit code and output (seconds-long; generous deadline)."""
    env = orchestrator_env(settings, "hostile-host-gpu0", lease_seconds=30, heartbeat_seconds=0.2, poll_seconds=0.2)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, STUB, str(Path(__file__).parent)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out, _ = communicate_or_kill(proc, timeout=600)
    return proc.returncode, out


def test_a_real_worker_trains_a_task_whose_data_has_a_file_name_that_is_not_utf8_then_the_next(settings, engine, synced):
    """``caf\\xe9.mp4`` made preparing raise UnicodeEncodeError: the worker exited 1, the task stayed
    running and the next one never ran. The file is left out and listed; both tasks train."""
    bad_name = os.path.join(os.fsencode(synced / "dataset1" / "drinking_water"), b"caf\xe9.mp4")
    with open(bad_name, "wb") as clip:
        clip.write(b"\x00\x00\x00\x18ftypmp42")
    queue = TaskQueue(engine)
    first, second = queue.submit(TASK), queue.submit({**TASK, "model_name": "pantry"})
    code, out = run_orchestrator_process(settings)
    assert (code, out.splitlines()[-1]) == (0, "tasks run: 2"), out
    assert [queue.get(first)["status"], queue.get(second)["status"]] == ["succeeded", "succeeded"]
    task_dir = Path(queue.get(first)["task_dir"])
    listed = {"path": "dataset1/drinking_water/caf\\xe9.mp4", "reason": NOT_UTF8}
    assert read_unlisted(task_dir) == [listed]
    assert all("caf" not in row.path for row in read_manifest(task_dir))

    from pytrain.training.data import load_samples  # imports torch

    assert load_samples(task_dir, synced, ["cooking", "drinking"])[1] == [listed]  # first in skipped.json


def test_a_row_nested_too_deep_for_the_decoder_fails_at_claim_and_the_task_behind_it_runs(settings, engine, synced):
    """A 3,000-deep ``options`` made every claim raise RecursionError: each worker exited 1 and the row
    stayed first in line. Migration 0006 refuses it; a row from before it (here: its CHECK dropped)
    is failed with the reason by the claim, and the worker goes on."""
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE training_tasks DROP CONSTRAINT IF EXISTS ck_training_tasks_options_within_limits"))
        deep = conn.execute(text(
            "INSERT INTO training_tasks (model_name, sources, classes, architecture, options) "
            "VALUES ('deep', '{dataset1}', '{cooking,drinking}', 'tiny', CAST(:options AS jsonb)) RETURNING id"),
            {"options": '{"x": ' + "[" * 3000 + "]" * 3000 + "}"}).scalar_one()
    queue = TaskQueue(engine)
    normal = queue.submit(TASK)
    code, out = run_orchestrator_process(settings)
    assert (code, out.splitlines()[-1]) == (0, "tasks run: 1"), out
    assert queue.get(normal)["status"] == "succeeded"
    with engine.connect() as conn:  # the deep row itself cannot be decoded: read its text
        status, error = conn.execute(text("SELECT status, error FROM training_tasks WHERE id = :id"), {"id": deep}).one()
    assert status == "failed"
    assert error.startswith("the task row cannot be read (RecursionError: maximum recursion depth exceeded"), error
    assert [(run.outcome, run.error) for run in queue.runs(deep)] == [("failed", error)]


@pytest.mark.parametrize("where", ["prepare", "after the run"])
def test_an_unexpected_exception_while_handling_a_task_fails_only_that_task(settings, engine, synced, monkeypatch, caplog, where):
    """Neither is a PyTrainError: the exception used to leave Orchestrator.run, leaving the task
    running until its third restart failed it as "worker X restarted while running this task"."""
    import pytrain.orchestrator.worker as worker_mod

    queue = TaskQueue(engine)
    first, second = queue.submit(TASK), queue.submit({**TASK, "model_name": "pantry"})
    name = "prepare_task" if where == "prepare" else "read_progress"
    real = getattr(worker_mod, name)

    def injected(task_or_dir, *args, **kwargs):  # prepare_task(task, ...) or read_progress(task_dir)
        if (task_or_dir["id"] == first) if name == "prepare_task" else task_or_dir.name.startswith(f"task-{first}-"):
            raise OSError(5, "Input/output error")
        return real(task_or_dir, *args, **kwargs)

    monkeypatch.setattr(worker_mod, name, injected)
    runner = FakeRunner()
    assert Orchestrator(settings, engine=engine, runner=runner, publisher=FakePublisher()).run(exit_when_idle=True) == 2
    failed = queue.get(first)
    assert (failed["status"], queue.get(second)["status"]) == ("failed", "succeeded")
    if where == "prepare":
        assert failed["error"] == f"cannot prepare task {first}: OSError: [Errno 5] Input/output error"
        assert runner.runs == [second]
    else:
        assert failed["error"] == ("worker test-worker crashed while handling the task: OSError: [Errno 5] Input/output error")
    assert any(r.exc_info and f"task {first}" in r.getMessage() for r in caplog.records)  # the traceback is logged
