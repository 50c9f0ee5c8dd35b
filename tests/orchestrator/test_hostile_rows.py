"""Rows a careless or hostile user could INSERT, on the real PostgreSQL and a real orchestrator.

Each row is inserted with plain SQL (the public API, parameters bound). It is either refused by
the database (a CHECK constraint, or PostgreSQL's own rule that text holds no NUL byte) or claimed
and failed with an error naming the value; the worker never crashes, nothing is written outside
the normal task's folder, and the normal task queued after them all still runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from fixtures.clips import write_tree
from orchestrator_fakes import LAYOUT, FakePublisher, FakeRunner
from pytrain.db import SourceRegistry, TaskQueue
from pytrain.orchestrator import Orchestrator
from pytrain.sources import sync_sources
from pytrain.spec import task_dir_name

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
    ("sources 1 MB", {"sources": [MB]}, f"sources entry '{'x' * 39}... (1048576 characters) {NOT_SOURCE}"),
    ("sources twice", {"sources": ["dataset1", "dataset1"]}, "sources lists 'dataset1' twice"),
    ("sources symlink out", {"sources": ["escape"]}, "dataset 'escape' "),
    ("classes NULL", {"classes": ["cooking", None]}, "refused: ck_training_tasks_classes_not_empty"),
    ("classes 10,000", {"classes": [f"c{i}" for i in range(10_000)]}, "classes lists 10000 entries; at most 1000"),
    ("classes 1 MB", {"classes": ["cooking", MB]}, f"classes entry '{'x' * 39}... (1048576 characters) {NOT_CLASS}"),
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
