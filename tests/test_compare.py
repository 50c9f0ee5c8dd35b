"""``pytrain compare``: runs side by side from PyTrain's own records.

The CLI in-process on a real PostgreSQL (the ``settings``/``engine`` fixtures): task rows inserted
with ``TaskQueue.submit``, their ``progress.jsonl`` and ``metrics.json`` written as real files in
real task folders (no training needed). The pure parts (:mod:`pytrain.compare`) are tested beside.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestrator.test_cli import cli  # noqa: F401 -- the in-process CLI fixture
from pytrain.compare import (
    PARAM_COLUMNS, compare_runs, differing_params, epoch_history, load_runs, run_params, summarize,
)
from pytrain.db import TaskQueue
from pytrain.spec import PROGRESS, MetricsRecord, ProgressRecord, read_progress_records, write_metrics
from pytrain.task_options import RUNNER_OPTIONS, TrainConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _write_progress(folder: Path, val_accuracies: list[float]) -> None:
    """A run's ``progress.jsonl``: start, one epoch record per validation accuracy, done."""
    records = [ProgressRecord(event="start", time=0.0, epochs=len(val_accuracies), resumed_from_epoch=0)]
    records += [ProgressRecord(event="epoch", time=float(epoch), epoch=epoch, epochs=len(val_accuracies), train_loss=1.0 / epoch,
                               val_loss=1.5 - acc, val_accuracy=acc) for epoch, acc in enumerate(val_accuracies, start=1)]
    records.append(ProgressRecord(event="done", time=99.0, test_accuracy=0.5, epochs_run=len(val_accuracies)))
    (folder / PROGRESS).write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")


def _submit_run(engine, settings, *, val: list[float] | None, test_accuracy: float = 0.75, version: int | None = None,
                model: str = "kitchen", **columns) -> int:
    """A task row and, when ``val`` is given, its finished run's task folder (progress and metrics).

    ``val``: the validation accuracy per epoch; ``None``: a task that never ran (queued, no folder).
    """
    row = {"model_name": model, "sources": ["dataset1"], "classes": ["cooking", "drinking"], **columns}
    if val is not None:
        folder = Path(tempfile.mkdtemp(prefix=f"task-{model}-", dir=settings.model_tasks_dir))
        _write_progress(folder, val)
        write_metrics(folder, MetricsRecord(test_accuracy=test_accuracy, epochs_run=len(val), wall_time_s=42.5))
        row |= {"status": "succeeded", "version": version, "task_dir": str(folder),
                "started_at": START, "finished_at": START + timedelta(seconds=90)}
    task_id = TaskQueue(engine).submit(row)
    return task_id


@pytest.fixture
def three_runs(engine, settings):
    """Three runs differing in learning rate and architecture only; the options differ in how
    they are written (left out, or given with the default value), not in value."""
    return [
        _submit_run(engine, settings, val=[0.5, 0.8, 0.7], test_accuracy=0.75, version=1, learning_rate=0.001, architecture="r3d_18"),
        _submit_run(engine, settings, val=[0.6, 0.65, 0.9], test_accuracy=0.875, version=2, learning_rate=0.01, architecture="r3d_18",
                    options={"patience": TrainConfig().patience}),
        _submit_run(engine, settings, val=[0.4, 0.4], test_accuracy=0.5, learning_rate=0.001, architecture="tiny",
                    options={"dropout": TrainConfig().dropout, "augment": True}),
    ]


def _table_rows(out: str) -> list[list[str]]:
    """The cells of each line of a rich table (header first), rules and borders dropped."""
    rows = []
    for line in out.splitlines():
        if "│" in line or "┃" in line:
            rows.append([cell.strip() for cell in line.replace("┃", "│").strip().strip("│").split("│")])
    return rows


def test_compare_shows_the_differing_parameters_only_and_json_agrees(cli, three_runs):
    code, out, err = cli("compare", *map(str, three_runs))
    assert code == 0, err
    header, *rows = _table_rows(out)
    assert header == ["task", "model", "status", "architecture", "learning_rate", "best val acc (epoch)", "test acc", "epochs",
                      "wall time", "version"]
    assert rows == [
        [str(three_runs[0]), "kitchen", "succeeded", "r3d_18", "0.001", "0.800 (2)", "0.750", "3", "42.5 s", "1"],
        [str(three_runs[1]), "kitchen", "succeeded", "r3d_18", "0.01", "0.900 (3)", "0.875", "3", "42.5 s", "2"],
        [str(three_runs[2]), "kitchen", "succeeded", "tiny", "0.001", "0.400 (1)", "0.500", "2", "42.5 s", ""],
    ]

    code, out, err = cli("compare", *map(str, three_runs), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["differing"] == ["architecture", "learning_rate"]
    summary = [(r["task_id"], r["params"], r["best_val_accuracy"], r["best_epoch"], r["test_accuracy"], r["epochs_run"],
                r["wall_time_s"], r["version"]) for r in data["runs"]]
    assert summary == [
        (three_runs[0], {"architecture": "r3d_18", "learning_rate": 0.001}, 0.8, 2, 0.75, 3, 42.5, 1),
        (three_runs[1], {"architecture": "r3d_18", "learning_rate": 0.01}, 0.9, 3, 0.875, 3, 42.5, 2),
        (three_runs[2], {"architecture": "tiny", "learning_rate": 0.001}, 0.4, 1, 0.5, 2, 42.5, None),
    ]
    assert [[h["val_accuracy"] for h in r["history"]] for r in data["runs"]] == [[0.5, 0.8, 0.7], [0.6, 0.65, 0.9], [0.4, 0.4]]


def test_compare_plot_writes_a_png_with_one_validation_curve_per_run(cli, three_runs, engine, settings, tmp_path):
    never_ran = _submit_run(engine, settings, val=None)
    path = tmp_path / "curves.png"

    code, out, err = cli("compare", *map(str, three_runs), str(never_ran), "--plot", str(path))

    assert code == 0, err
    assert path.read_bytes()[:8] == PNG_SIGNATURE and f"curves: {path}" in out
    from matplotlib import pyplot

    from pytrain.training.plots import comparison_figure

    fig = comparison_figure(load_runs(TaskQueue(engine), settings.model_tasks_dir, [*three_runs, never_ran]).curves())
    try:
        ax_acc, ax_loss = fig.axes
        assert [list(line.get_ydata()) for line in ax_acc.get_lines()] == [[0.5, 0.8, 0.7], [0.6, 0.65, 0.9], [0.4, 0.4]]
        assert len(ax_loss.get_lines()) == 3  # the task that never ran draws no line
        assert [t.get_text() for t in ax_acc.get_legend().get_texts()] == [
            f"task {three_runs[0]} (architecture=r3d_18, learning_rate=0.001)",
            f"task {three_runs[1]} (architecture=r3d_18, learning_rate=0.01)",
            f"task {three_runs[2]} (architecture=tiny, learning_rate=0.001)",
        ]
    finally:
        pyplot.close(fig)


def test_compare_plot_into_a_missing_folder_names_it(cli, three_runs, tmp_path):
    code, _, err = cli("compare", *map(str, three_runs), "--plot", str(tmp_path / "missing" / "curves.png"))
    assert code == 1 and f"folder {tmp_path / 'missing'} does not exist" in err


def test_compare_names_an_unknown_task_id(cli, three_runs):
    code, out, err = cli("compare", str(three_runs[0]), "999")
    assert (code, out) == (1, "")
    assert err.strip() == "error: no training task with id 999 (hint: `pytrain tasks` lists them)"


def test_compare_of_fewer_than_two_runs_says_so(cli, three_runs):
    code, _, err = cli("compare", str(three_runs[0]), str(three_runs[0]))  # a repeated id is one run
    assert code == 1 and f"fewer than two runs to compare: the tasks given found task {three_runs[0]}" in err
    code, _, err = cli("compare", "--model", "garage")
    assert code == 1 and "fewer than two runs to compare: the newest 5 tasks of model 'garage' found no task" in err


def test_a_task_that_never_ran_shows_blank_figures(cli, three_runs, engine, settings):
    never_ran = _submit_run(engine, settings, val=None, learning_rate=0.05)

    code, out, err = cli("compare", str(three_runs[0]), str(never_ran))

    assert code == 0, err
    assert _table_rows(out)[1:] == [[str(three_runs[0]), "kitchen", "succeeded", "0.001", "0.800 (2)", "0.750", "3", "42.5 s", "1"],
                                    [str(never_ran), "kitchen", "queued", "0.05", "", "", "", "", ""]]


def test_compare_selects_the_newest_tasks_of_a_model_with_last(cli, engine, settings):
    ids = [_submit_run(engine, settings, val=[0.5], model=model, seed=i) for i, model in enumerate(["kitchen", "garage", "kitchen", "kitchen"])]

    def compared(*args: str) -> list[int]:
        code, out, err = cli("compare", "--json", *args)
        assert code == 0, err
        return [r["task_id"] for r in json.loads(out)["runs"]]

    assert compared("--model", "kitchen", "--last", "2") == [ids[3], ids[2]]
    assert compared("--model", "kitchen") == [ids[3], ids[2], ids[0]]
    assert compared("--last", "2") == [ids[3], ids[2]]
    assert compared() == ids[::-1]  # the newest 5: all four
    code, _, err = cli("compare", str(ids[0]), str(ids[1]), "--last", "2")
    assert code == 1 and "give task ids or --model/--last, not both" in err


def test_a_gone_task_folder_falls_back_on_the_rows_metrics_and_progress(cli, engine, settings, three_runs):
    metrics = MetricsRecord(test_accuracy=0.6, epochs_run=4, wall_time_s=10.0, history=[{"epoch": 1, "val_accuracy": 0.3},
                                                                                        {"epoch": 2, "val_accuracy": 0.55}])
    gone = TaskQueue(engine).submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"],
                                     "status": "failed", "task_dir": str(settings.model_tasks_dir / "deleted"),
                                     "metrics": metrics.to_dict(), "progress": {"event": "epoch", "epoch": 2, "val_accuracy": 0.55}})

    code, out, err = cli("compare", str(three_runs[0]), str(gone), "--json")

    assert code == 0, err
    run = json.loads(out)["runs"][1]
    assert (run["best_val_accuracy"], run["best_epoch"], run["test_accuracy"], run["epochs_run"], run["wall_time_s"]) == (0.55, 2, 0.6, 4, 10.0)


# -- the pure parts -------------------------------------------------------------------------------


def _row(task_id: int = 1, **columns) -> dict:
    from pytrain.task_columns import task_defaults

    return {**task_defaults(), "id": task_id, "model_name": "kitchen", "sources": ["d"], "classes": ["a", "b"], "status": "queued",
            "progress": {}, "metrics": None, "version": None, **columns}


def test_an_option_left_out_equals_the_option_given_with_its_default():
    assert run_params(_row(options={})) == run_params(_row(options={"patience": TrainConfig().patience, "cache": TrainConfig().cache}))
    assert differing_params([run_params(_row(options={})), run_params(_row(options={"patience": 3}))]) == ["patience"]


def test_params_are_the_training_columns_then_every_option():
    params = run_params(_row(options={"slurm": {"partition": "gpu"}}))
    assert list(params) == [*PARAM_COLUMNS, *(f.name for f in fields(TrainConfig)), *RUNNER_OPTIONS]
    assert RUNNER_OPTIONS == ("slurm", "ray", "experiment", "sweep", "trial")  # every runner/orchestrator option, MLflow's and sweeps' included
    assert "priority" not in params and "options" not in params
    assert not set(PARAM_COLUMNS) & {f.name for f in fields(TrainConfig)}  # an option never hides a column


def test_a_resumed_run_counts_the_last_record_of_a_repeated_epoch():
    records = [ProgressRecord(event="epoch", epoch=1, val_accuracy=0.2), ProgressRecord(event="epoch", epoch=2, val_accuracy=0.9),
               ProgressRecord(event="start", resumed_from_epoch=1), ProgressRecord(event="epoch", epoch=2, val_accuracy=0.4)]
    assert [h["val_accuracy"] for h in epoch_history(records)] == [0.2, 0.4]
    run = summarize(_row(), records, None)
    assert (run.best_val_accuracy, run.best_epoch, run.epochs_run) == (0.4, 2, 2)


def test_a_run_without_test_clips_has_no_test_accuracy_rather_than_nan():
    run = summarize(_row(), [], MetricsRecord(test_accuracy=float("nan")))
    assert run.test_accuracy is None and run.best_val_accuracy is None and run.history == []
    diverged = summarize(_row(), [ProgressRecord(event="epoch", epoch=1, train_loss=float("nan"), val_accuracy=0.5)], None)
    assert diverged.history == [{"epoch": 1, "train_loss": None, "train_accuracy": None, "val_loss": None, "val_accuracy": 0.5}]


def test_compare_runs_refuses_one_run():
    with pytest.raises(Exception, match="fewer than two runs to compare: the tasks given found task 1"):
        compare_runs([summarize(_row(), [], None)])


def test_read_progress_records_keeps_every_line_that_parses(tmp_path):
    lines = [ProgressRecord(event="epoch", epoch=1).to_json(), '{"epoch": "one"}', ProgressRecord(event="epoch", epoch=2).to_json(), '{"ev']
    (tmp_path / PROGRESS).write_text("\n".join(lines), encoding="utf-8")
    assert [r.epoch for r in read_progress_records(tmp_path)] == [1, 2]
    assert read_progress_records(tmp_path / "missing") == []
