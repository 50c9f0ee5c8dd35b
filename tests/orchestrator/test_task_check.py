"""The one task check (:func:`pytrain.task_check.check_task`), the task's records made from the
column table, and the one settings override."""

from __future__ import annotations

import ast
import dataclasses
import uuid
from pathlib import Path

import pytest
from orchestrator_fakes import LAYOUT

from pytrain.errors import ConfigurationError, SplitError
from pytrain.orchestrator.prepare import prepare_task
from pytrain.settings import Settings, with_overrides
from pytrain.spec import TaskSpec
from pytrain.task_check import check_task
from pytrain.task_columns import TASK_COLUMNS, column, task_defaults

APP = Path(__file__).resolve().parents[2] / "app" / "pytrain"


def _row(**values) -> dict:
    return {"id": 7, "uid": uuid.uuid4(), **task_defaults(), "model_name": "kitchen", "sources": ["dataset1"],
            "classes": ["cooking", "drinking"], **values}


def test_check_task_without_a_sources_root_checks_the_rows_own_values_only():
    # A row from before migration 0003 (its CHECKs are NOT VALID for old rows) may hold a negative seed.
    with pytest.raises(ConfigurationError, match=r"seed -1 is out of bounds \(>= 0\)"):
        check_task(_row(seed=-1), sources_dir=None, registered=None)
    with pytest.raises(ConfigurationError, match=r"sources entry '\.\./x' is not a dataset folder name"):
        check_task(_row(sources=["../x"]), sources_dir=None, registered=None)
    with pytest.raises(ConfigurationError, match="'cahce' is not known"):
        check_task(_row(options={"cahce": True}), sources_dir=None, registered=None)
    assert check_task(_row(), sources_dir=None, registered=None) is None


def test_check_task_resolves_the_classes_and_splits_the_clips(tree):
    root = tree(LAYOUT)
    data = check_task(_row(), sources_dir=root, registered=["dataset1"])
    assert data.resolved.class_list == ["cooking", "drinking"]
    assert sorted(row.path for row in data.rows) == sorted(clip.path for clip in data.resolved.clips)
    assert {row.split for row in data.rows} == {"train", "val", "test"}
    tree({"tiny": {"cooking_a": 1, "eating": 1}})
    with pytest.raises(SplitError):
        check_task(_row(sources=["tiny"], classes=["cooking", "eating"]), sources_dir=root, registered=None)


def test_submit_and_prepare_refuse_a_single_class_with_the_same_words(tree, tmp_path):
    root = tree(LAYOUT)
    with pytest.raises(ConfigurationError) as checked:
        check_task(_row(classes=["cooking"]), sources_dir=root, registered=None)
    settings = Settings(data_dir=tmp_path / "data", sources_dir=root, model_tasks_dir=tmp_path / "tasks")
    with pytest.raises(ConfigurationError) as prepared:
        prepare_task(_row(classes=["cooking"]), settings, registered=None)
    assert checked.value.message == prepared.value.message == "class list ['cooking'] has fewer than 2 classes"
    assert checked.value.hint == prepared.value.hint == "select at least two classes (-c a,b), or --include-other"
    assert not (tmp_path / "tasks").exists()  # refused before any folder was made


def test_task_spec_refuses_a_number_outside_its_columns_bounds():
    with pytest.raises(ConfigurationError, match=r"height 4 is out of bounds \(8\.\.4096\)"):
        TaskSpec(task_id=1, model_name="m", class_list=["a", "b"], height=4)
    with pytest.raises(ConfigurationError, match=r"task 1: class_list \['a'\] has fewer than 2 classes"):
        TaskSpec(task_id=1, model_name="m", class_list=["a"])


def test_task_spec_carries_every_column_training_reads_with_its_default():
    spec = TaskSpec(task_id=1, model_name="m", class_list=["a", "b"])
    for c in TASK_COLUMNS:
        if c.training and not c.required:
            assert getattr(spec, c.name) == c.default, c.name
    assert spec.sources == [] and spec.classes == []  # bookkeeping: the class list is what training uses
    assert not hasattr(spec, "priority") and spec.extra == {}
    assert dataclasses.replace(spec, epochs=3).epochs == 3
    assert column("epochs").training and not column("priority").training


def test_with_overrides_validates_like_the_environment(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert with_overrides(settings, gpus=None) is settings  # an option left unset changes nothing
    assert with_overrides(settings, poll_seconds=7).poll_seconds == 7
    with pytest.raises(ConfigurationError, match=r"invalid settings: PYTRAIN_POLL_SECONDS='soon': Input should be a valid number"):
        with_overrides(settings, poll_seconds="soon")
    with pytest.raises(ConfigurationError, match=r"PYTRAIN_HEARTBEAT_SECONDS \(100\.0\) must be smaller than PYTRAIN_LEASE_SECONDS"):
        with_overrides(settings, heartbeat_seconds=100.0)


def test_no_command_module_imports_the_cli_entry_point():
    """``cli/main.py`` loads the command modules; none of them imports it back (no hidden circle)."""
    importers = []
    for path in sorted((APP / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in ("pytrain.cli.main", "pytrain.cli") and \
                    (node.module == "pytrain.cli.main" or any(a.name == "main" for a in node.names)):
                importers.append(path.name)
    assert [name for name in importers if name != "__main__.py"] == []
