"""The console's rules without a browser: password hashes, the bind rule, the form's parsing,
files read only inside task folders and only as a bounded tail."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fixtures.console import PASSWORD, PASSWORD_HASH, Client, ConsoleProcess
from pytrain.console.form import FORM, field_of, read_form
from pytrain.console.security import check_bind, hash_password, verify_password
from pytrain.console.views import LOG_TAIL_BYTES, LOG_TAIL_LINES, log_tail, task_folder, task_state
from pytrain.errors import ConfigurationError


def test_a_password_is_kept_as_a_salted_scrypt_hash():
    stored = hash_password("s3cret password")
    assert stored.startswith("scrypt:16384:8:1:") and "s3cret" not in stored and "$" not in stored
    assert stored != hash_password("s3cret password")  # a new salt each time
    assert verify_password("s3cret password", stored) and not verify_password("s3cret passwore", stored)
    assert verify_password(PASSWORD, PASSWORD_HASH)
    with pytest.raises(ConfigurationError, match="PYTRAIN_CONSOLE_PASSWORD_HASH is not a scrypt hash"):
        verify_password("x", "plain-text-password")


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "console.example.org"])
def test_a_non_loopback_address_without_a_password_is_refused(host):
    with pytest.raises(ConfigurationError, match=f"listen on {host}, reachable from other machines, without a password"):
        check_bind(host, None)
    check_bind(host, PASSWORD_HASH)  # with a password: allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_address_needs_no_password(host):
    check_bind(host, None)


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTRAIN_")}
    return subprocess.run([sys.executable, "-m", "pytrain.cli.main", "console", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120)


def test_the_console_refuses_to_start_on_a_public_address_without_a_password():
    done = _cli("--host", "0.0.0.0", "--port", "1")
    assert done.returncode == 1
    assert "error: the console would listen on 0.0.0.0, reachable from other machines, without a password" in done.stderr
    assert "PYTRAIN_CONSOLE_PASSWORD_HASH" in done.stderr


def test_hash_password_prints_a_hash_of_the_line_on_stdin():
    done = _cli("--hash-password", stdin="a long passphrase\n")
    assert done.returncode == 0, done.stderr
    assert verify_password("a long passphrase", done.stdout.strip())


def test_the_log_tail_is_bounded(tmp_path):
    (tmp_path / "train.log").write_bytes(b"".join(b"line %06d \xff\n" % i for i in range(100_000)))  # 1.3 MB, a bad byte per line
    tail = log_tail(tmp_path)
    assert len(tail) == LOG_TAIL_LINES and tail[-1] == "line 099999 \ufffd"
    assert sum(len(line) + 1 for line in tail) <= LOG_TAIL_BYTES
    assert log_tail(None) == [] and log_tail(tmp_path / "missing") == []


def test_a_page_reads_no_file_outside_the_task_folders(tmp_path):
    from pytrain.settings import Settings

    settings = Settings(model_tasks_dir=tmp_path / "model_tasks", data_dir=tmp_path / "data")
    inside = settings.model_tasks_dir / "task-1-kitchen"
    inside.mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (settings.model_tasks_dir / "link").symlink_to(tmp_path / "secret")
    found = [task_folder(settings, {"task_dir": d}) for d in (str(inside), "task-1-kitchen", "/etc", "../secret", "link", str(settings.model_tasks_dir), None)]
    assert found == [inside, inside, None, None, None, None, None]


def test_the_form_keeps_only_what_differs_from_the_defaults_and_names_bad_numbers():
    from dataclasses import fields

    from pytrain.task_options import TrainConfig

    # An HTML checkbox left unchecked is not posted: for an option that defaults to true that means false.
    unchecked = {f.name: False for f in fields(TrainConfig) if f.default is True}
    assert "augment" in unchecked
    given, errors = read_form({"model_name": " k ", "sources": "a, b,", "classes": "x,y", "epochs": "3", "num_frames": "",
                               "pretrained": "on", "option.augment": "on", "option.patience": "4", "learning_rate": "fast"})
    assert given == {"model_name": "k", "sources": ["a", "b"], "classes": ["x", "y"], "pretrained": True, "epochs": 3,
                     "options": {**{k: v for k, v in unchecked.items() if k != "augment"}, "patience": 4}}  # augment checked: its default
    assert errors == {"learning_rate": "'fast' is not a number"}
    assert read_form({"model_name": "k"})[0] == {"model_name": "k", "options": unchecked}


@pytest.mark.parametrize(("message", "field"), [
    ("class(es) ['nosuch'] have no folder in dataset(s) ['dataset1']", "classes"),
    ("dataset(s) ['other'] are not registered", "sources"),
    ("epochs 0 is out of bounds (1..100000)", "epochs"),
    ("task option patience=0 is out of range: it must be >= 1 and <= 100000", "option.patience"),
    ("train/val/test fractions [0.5, 0.2, 0.2] must sum to 1", "test_fraction"),
    ("something else went wrong", FORM),
])
def test_an_error_is_shown_beside_the_field_it_names(message, field):
    assert field_of(message) == field


def test_the_progress_bar_is_the_share_of_epochs_done():
    row = {"id": 1, "status": "running", "epochs": 10, "progress": {"event": "epoch", "epoch": 3, "epochs": 4}, "version": None, "error": None}
    assert task_state(row)["percent"] == 75.0
    assert task_state({**row, "progress": {}})["percent"] == 0.0
    assert task_state({**row, "status": "succeeded", "progress": {}})["percent"] == 100.0
    assert task_state({**row, "status": "failed", "error": "boom\ntraceback"})["error"] == "boom"


def test_on_a_public_address_every_page_needs_a_login(settings, engine, tmp_path):
    from fixtures.processes import orchestrator_env
    from pytrain.serving import free_port

    env = orchestrator_env(settings, "unused", lease_seconds=5, heartbeat_seconds=1, poll_seconds=1, PYTRAIN_CONSOLE_PASSWORD_HASH=PASSWORD_HASH)
    with ConsoleProcess(env, tmp_path / "console.log", free_port(), host="0.0.0.0") as console:
        client = Client(console.url)
        for path in ("/tasks", "/tasks/1", "/submit", "/models", "/workers", "/sources"):
            status, _, headers = client.request(path)
            assert (status, headers["location"]) == (303, f"/login?next={path}")
        assert client.request("/events?ids=1")[0] == 403
        client.log_in()
        assert [client.request(path)[0] for path in ("/tasks", "/submit", "/workers")] == [200, 200, 200]


def test_the_task_page_links_to_the_mlflow_run_the_tracker_logged(tracking_settings, engine, tmp_path, mlflow_server):
    from fixtures.processes import orchestrator_env
    from pytrain.db import TaskQueue
    from pytrain.serving import free_port
    from pytrain.tracking.logged import TrackedRun
    from pytrain.tracking.store import make_client
    from pytrain.tracking.tracker import sync_run

    queue = TaskQueue(engine)
    task_id = queue.submit({"model_name": "tracked", "sources": ["dataset1"], "classes": ["a", "b"], "options": {"experiment": "exp-x"}})
    claim = queue.claim("host-gpu0", 60)
    untracked = queue.submit({"model_name": "tracked", "sources": ["dataset1"], "classes": ["a", "b"]})
    run = TrackedRun.from_row(claim.task, run_id=claim.run_id, worker_id="host-gpu0", runner="local", task_dir=None)
    mlflow_run_id, _ = sync_run(make_client(tracking_settings), run, tracking_settings)  # what the orchestrator's tracker does
    experiment_id = make_client(tracking_settings).get_experiment_by_name("exp-x").experiment_id
    env = orchestrator_env(tracking_settings, "unused", lease_seconds=5, heartbeat_seconds=1, poll_seconds=1, PYTRAIN_MLFLOW="on",
                           PYTRAIN_MLFLOW_TRACKING_URI=mlflow_server.url)
    with ConsoleProcess(env, tmp_path / "console.log", free_port()) as console:
        client = Client(console.url)
        page = client.request(f"/tasks/{task_id}")[1]
        status, _, headers = client.request(f"/tasks/{task_id}/tracking")
        other = client.request(f"/tasks/{untracked}")[1]
    assert 'id="tracking-link"' in page and 'id="tracking-link"' not in other  # a task that never ran has no link
    assert (status, headers["location"]) == (303, f"{mlflow_server.url}/#/experiments/{experiment_id}/runs/{mlflow_run_id}")


def test_without_a_password_the_link_printed_at_start_logs_in_and_nothing_else_does(settings, engine, tmp_path):
    import re

    from fixtures.processes import orchestrator_env
    from pytrain.db import TaskQueue
    from pytrain.serving import free_port

    task_id = TaskQueue(engine).submit({"model_name": "k", "sources": ["dataset1"], "classes": ["a", "b"]})
    env = orchestrator_env(settings, "unused", lease_seconds=5, heartbeat_seconds=1, poll_seconds=1)
    with ConsoleProcess(env, tmp_path / "console.log", free_port()) as console:
        link = re.search(r"http://127\.0\.0\.1:\d+(/login\?token=[\w-]+)", (tmp_path / "console.log").read_text())[1]
        client = Client(console.url)
        assert client.request("/tasks")[0] == 200  # loopback: pages are open
        token = client.csrf()
        assert client.request(f"/tasks/{task_id}/cancel", {"csrf_token": token})[0] == 403  # actions are not
        assert client.request("/login", {"csrf_token": token, "password": "guess"})[0] == 401
        assert client.request("/login?token=not-the-token")[0] == 200  # the login page again, not a login
        status, _, headers = client.request(link)
        assert (status, headers["location"]) == (303, "/tasks")
        status, _, _ = client.request(f"/tasks/{task_id}/cancel", {"csrf_token": client.csrf("/tasks")})
    assert status == 303 and TaskQueue(engine).get(task_id).status == "cancelled"
