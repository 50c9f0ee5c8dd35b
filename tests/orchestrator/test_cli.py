"""The ``pytrain`` commands of this part, run in-process through ``pytrain.cli.main.main``."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytrain.cli.main import main
from pytrain.db import TaskQueue, head_revision
from pytrain.settings import get_settings


@pytest.fixture
def cli(settings, monkeypatch, capsys):
    """``cli(*args) -> (exit_code, stdout, stderr)`` with PYTRAIN_* pointing at the test's database and folders."""
    for name in ("database_url", "sources_dir", "model_tasks_dir", "model_repo_dir", "results_dir", "data_dir", "worker_id"):
        value = getattr(settings, name)
        monkeypatch.setenv(f"PYTRAIN_{name.upper()}", value.get_secret_value() if hasattr(value, "get_secret_value") else str(value))
    for name in ("lease_seconds", "heartbeat_seconds", "poll_seconds"):
        monkeypatch.setenv(f"PYTRAIN_{name.upper()}", str(getattr(settings, name)))
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    get_settings.cache_clear()


def test_submit_inserts_a_validated_task_with_database_defaults(cli, engine, synced):
    code, out, _ = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,drinking", "--epochs", "3", "--priority", "2")
    assert (code, out.strip()) == (0, "task 1 queued (kitchen)")
    row = TaskQueue(engine).get(1)
    assert (row["classes"], row["epochs"], row["priority"], row["num_frames"], row["architecture"]) == (
        ["cooking", "drinking"], 3, 2, 20, "r3d_18")


def test_submit_options_become_the_rows_options_json(cli, engine, synced):
    code, _, _ = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,drinking",
                     "-o", "cache=true", "--option", "class_weights=balanced", "-o", "patience=4")
    assert code == 0
    assert TaskQueue(engine).get(1)["options"] == {"cache": True, "class_weights": "balanced", "patience": 4}
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,drinking", "-o", "cache")
    assert code == 1 and "--option 'cache' is not KEY=VALUE" in err


def test_submit_rejects_bad_values_with_one_line_naming_each_value_and_exit_1(cli, engine, synced):
    code, out, err = cli("submit", "-m", "bad name", "-s", "dataset1", "-c", "cooking", "--epochs", "0")
    assert code == 1
    assert err.strip() == (
        "error: invalid task: model_name='bad name': String should match pattern '^[A-Za-z0-9_-]{1,64}$'; "
        "epochs=0: Input should be greater than or equal to 1 "
        "(hint: see `pytrain submit --help` and the column table in docs/user-guide/tasks.md)"
    )
    assert TaskQueue(engine).counts() == {}


def test_submit_rejects_a_negative_seed(cli, engine, synced):
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,drinking", "--seed", "-1")
    assert (code, err.strip()) == (1, "error: invalid task: seed=-1: Input should be greater than or equal to 0 "
                                      "(hint: see `pytrain submit --help` and the column table in docs/user-guide/tasks.md)")
    assert TaskQueue(engine).counts() == {}


def test_submit_rejects_fractions_not_summing_to_one(cli, engine, synced):
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,drinking", "--train-fraction", "0.5")
    assert code == 1
    assert err.strip() == (
        "error: invalid task: train/val/test fractions [0.5, 0.2, 0.2] must sum to 1 "
        "(hint: see `pytrain submit --help` and the column table in docs/user-guide/tasks.md)"
    )
    assert TaskQueue(engine).counts() == {}


def test_submit_rejects_a_class_with_no_folder_before_inserting(cli, engine, synced):
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,flying")
    assert code == 1
    assert err.strip() == (
        "error: class(es) ['flying'] have no folder in dataset(s) ['dataset1'] (hint: classes found: "
        "['cooking', 'drinking', 'eating']; a class folder is named <class> or <class>_<subclass>)"
    )
    assert TaskQueue(engine).counts() == {}


def test_submit_rejects_a_single_class_without_include_other(cli, engine, synced):
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking")
    assert code == 1
    assert err.strip() == (
        "error: class list ['cooking'] has fewer than 2 classes (hint: select at least two classes (-c a,b), or --include-other)"
    )
    assert cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking", "--include-other")[:2] == (0, "task 1 queued (kitchen)\n")


def test_submit_rejects_a_class_with_too_few_clips_for_the_split(cli, engine, synced):
    from fixtures.clips import write_tree

    write_tree(synced, {"dataset1": {"walking_dog": 1}})
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,walking")
    assert code == 1
    assert err.startswith("error: class 'walking' has 1 clip(s); a 0.6/0.2/0.2 ") and len(err.strip().splitlines()) == 1
    assert TaskQueue(engine).counts() == {}


def test_submit_rejects_an_unknown_architecture(cli, engine, synced):
    pytest.importorskip("torch", reason="the architecture list comes with the training extra")
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,drinking", "--architecture", "resnet9000")
    assert code == 1
    assert err.startswith("error: unknown architecture 'resnet9000' (hint: --architecture one of [")
    assert "'tiny'" in err and "'r3d_18'" in err
    assert TaskQueue(engine).counts() == {}


def test_a_bad_option_value_is_one_usage_error_line_not_a_traceback(cli, engine, synced):
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset1", "-c", "cooking,drinking", "--epochs", "abc")
    assert (code, err.strip()) == (2, "error: Invalid value for '--epochs': Input should be a valid integer, unable to parse "
                                      "string as an integer (hint: see `pytrain submit --help`)")
    code, _, err = cli("tasks", "--no-such-option")
    assert (code, err.strip()) == (2, "error: No such option: --no-such-option (hint: see `pytrain tasks --help`)")
    code, _, err = cli("show")
    assert (code, err.strip()) == (2, "error: Missing argument 'task_id'. (hint: see `pytrain show --help`)")
    assert TaskQueue(engine).counts() == {}


def test_no_arguments_prints_the_help(cli):
    code, out, err = cli()
    assert code == 2
    assert "Usage: pytrain [OPTIONS] COMMAND [ARGS]..." in out + err and "orchestrate" in out + err


def test_tasks_rejects_an_unknown_status_and_a_limit_below_one(cli, engine):
    code, _, err = cli("tasks", "--status", "done")
    assert (code, err.strip()) == (2, "error: Invalid value for --status: 'done' is not one of queued, running, succeeded, "
                                      "failed, cancelled, pruned (hint: see `pytrain tasks --help`)")
    code, _, err = cli("tasks", "-n", "-1")
    assert (code, err.strip()) == (2, "error: Invalid value for '--limit' / '-n': Input should be greater than or equal to 1 "
                                      "(hint: see `pytrain tasks --help`)")


def test_a_bad_pytrain_variable_is_one_line_naming_it_and_its_value(cli, monkeypatch):
    monkeypatch.setenv("PYTRAIN_POLL_SECONDS", "soon")
    get_settings.cache_clear()
    code, _, err = cli("tasks")
    assert code == 1
    assert err.strip() == (
        "error: invalid settings: PYTRAIN_POLL_SECONDS='soon': Input should be a valid number, unable to parse string "
        "as a number (hint: fix or unset those PYTRAIN_* environment variables)"
    )


def test_a_cause_that_repeats_the_message_is_not_printed_twice():
    from pytrain.cli.main import format_error
    from pytrain.errors import DatabaseError

    driver = ConnectionError("connection refused")
    try:
        try:
            raise RuntimeError("(psycopg.OperationalError) connection refused") from driver
        except RuntimeError as wrapped:
            raise DatabaseError("cannot reach the database") from wrapped
    except DatabaseError as exc:
        assert format_error(exc) == (
            "cannot reach the database; caused by RuntimeError: (psycopg.OperationalError) connection refused")


def test_submit_rejects_unregistered_dataset_and_names_sync(cli, engine, synced):
    code, _, err = cli("submit", "-m", "kitchen", "-s", "dataset7", "-c", "cooking,drinking")
    assert code == 1
    assert err.strip() == "error: dataset(s) ['dataset7'] are not registered (hint: run `pytrain sources sync`)"


def test_tasks_show_and_cancel(cli, engine, synced):
    queue = TaskQueue(engine)
    task_id = queue.submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]})
    queue.heartbeat(queue.claim("w", 30), 30, {"event": "epoch", "epoch": 3, "epochs": 50, "train_loss": 0.25, "val_accuracy": 0.5})
    code, out, _ = cli("tasks")
    assert code == 0
    assert "kitchen" in out and "running" in out and "epoch 3/50, loss 0.250, val acc 0.50" in out
    code, out, _ = cli("tasks", "--json")
    assert json.loads(out.splitlines()[0])["id"] == task_id
    code, out, _ = cli("show", str(task_id))
    assert json.loads(out)["progress"]["epoch"] == 3
    assert cli("cancel", str(task_id))[1].strip() == f"task {task_id} cancelled"
    assert cli("cancel", str(task_id))[1].strip() == f"task {task_id} had already ended (cancelled); nothing to cancel"
    code, _, err = cli("show", "999")
    assert (code, err.strip()) == (1, "error: no training task with id 999 (hint: `pytrain tasks` lists them)")


def test_sources_list_with_nothing_registered_says_how_to_register(cli, engine):
    assert cli("sources", "list") == (0, "", "no dataset is registered (run `pytrain sources sync`)\n")


def test_sources_sync_registers_folders(cli, settings):
    (settings.sources_dir / "dataset1" / "cooking_a").mkdir(parents=True)
    code, out, _ = cli("sources", "sync")
    assert code == 0
    assert "registered: dataset1" in out and "added: dataset1" in out
    assert cli("sources", "list")[1].strip() == "dataset1"


def test_orchestrate_exit_when_idle_returns_on_an_empty_queue(cli):
    code, out, _ = cli("orchestrate", "--exit-when-idle")
    assert (code, out.strip()) == (0, "worker test-worker: 0 task(s) run")


def test_commands_refuse_a_database_without_schema_until_db_upgrade(cli, monkeypatch, empty_database_url):
    monkeypatch.setenv("PYTRAIN_DATABASE_URL", empty_database_url)
    get_settings.cache_clear()
    code, _, err = cli("orchestrate", "--exit-when-idle")
    assert (code, err.strip()) == (1, "error: the database has no PyTrain schema (hint: run `pytrain db upgrade`)")
    assert cli("db", "upgrade")[:2] == (0, f"database schema at revision {head_revision()}\n")
    assert cli("tasks")[0] == 0


def test_tasks_watch_redraws_until_ctrl_c(cli, engine, monkeypatch):
    import pytrain.cli.tasks as tasks_cli

    TaskQueue(engine).submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]})
    sleeps = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(tasks_cli.time, "sleep", fake_sleep)
    code, out, _ = cli("tasks", "--watch", "1")
    assert code == 0
    assert sleeps == [1.0, 1.0]
    assert "kitchen" in out and "queued" in out


def test_db_psql_runs_sql_on_the_pytrain_database(cli, engine, tmp_path):
    TaskQueue(engine).submit({"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"]})
    out_file = tmp_path / "psql.out"
    code, _, _ = cli("db", "psql", "-X", "-t", "-A", "-o", str(out_file), "-c", "SELECT model_name, status FROM training_tasks")
    assert code == 0
    assert out_file.read_text().strip() == "kitchen|queued"


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_db_psql_passes_the_password_in_its_environment_never_on_its_command_line(database_url, engine, tmp_path):
    """Every local user can read a process's command line (ps, /proc/PID/cmdline): the real psql,
    connected to the real server, has the URL there without the password, and PGPASSWORD in its
    own environment (/proc/PID/environ, readable by its user only)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    password = "pw-" + secrets.token_hex(12)
    url = make_url(database_url).set(password=password).render_as_string(hide_password=False)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PYTRAIN_", "PG"))},
           "PYTRAIN_DATABASE_URL": url, "PYTRAIN_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "pytrain.cli.main", "db", "psql", "-X", "-c", "SELECT pg_sleep(300)"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        connected = 0
        while time.monotonic() < deadline and not connected and proc.poll() is None:
            with engine.connect() as conn:  # the psql session is live: it connected with that URL
                connected = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(300)'")).scalar_one()
            time.sleep(0.2)
        assert connected, proc.communicate(timeout=30)
        [psql] = _children(proc.pid)
        argv = (Path("/proc") / str(psql) / "cmdline").read_bytes().split(b"\0")
        environ = (Path("/proc") / str(psql) / "environ").read_bytes().split(b"\0")
    finally:
        for pid in _children(proc.pid):  # psql first: once its parent is gone it is no longer found
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.communicate(timeout=30)
    assert Path(argv[0].decode()).name == "psql"
    assert not any(password.encode() in arg for arg in argv), argv
    assert f"PGPASSWORD={password}".encode() in environ


@pytest.mark.parametrize("password", ["change-me", "postgres", ""])
def test_orchestrate_refuses_a_guessable_database_password_on_a_network_host(cli, monkeypatch, password):
    """What `cp .env.example .env` with the old example password gave the compose orchestrator."""
    monkeypatch.setenv("PYTRAIN_DATABASE_URL", f"postgresql+psycopg://pytrain:{password}@postgres:5432/pytrain")
    get_settings.cache_clear()
    code, out, err = cli("orchestrate", "--exit-when-idle")
    assert code == 1, (out, err)
    assert "password for user 'pytrain' on postgres" in err
    assert "POSTGRES_PASSWORD in .env" in err and 'see docs/operations/security.md' in err
    assert not password or password not in err.replace("postgres", "")
