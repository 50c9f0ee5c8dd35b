"""The console over plain HTTP against a real ``pytrain console`` process and a real PostgreSQL:
pages of tasks, the login, the CSRF rule, the security headers and escaping."""

from __future__ import annotations

import re
import pytest
from sqlalchemy import insert, text

from console_stub import make_sweep
from fixtures.console import Client
from pytrain.db import TaskQueue, TrainingTask
from pytrain.console.views import PAGE_SIZE

SCRIPT = "<script>alert(1)</script>"


def ids_on(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-task-id="(\d+)"', page)]


@pytest.fixture(scope="module")
def many_tasks(console_engine) -> list[int]:
    """120 tasks (every tenth failed), inserted in one statement; their ids, oldest first."""
    rows = [{"model_name": f"m{i % 3}", "sources": ["dataset1"], "classes": ["cooking", "drinking"]} for i in range(120)]
    with console_engine.begin() as conn:
        ids = [r.id for r in conn.execute(insert(TrainingTask).returning(TrainingTask.id), rows)]
        conn.execute(text("UPDATE training_tasks SET status = 'failed', error = 'boom' WHERE id = ANY(:ids)"), {"ids": ids[::10]})
    return sorted(ids)


def test_the_tasks_page_shows_the_newest_page_and_links_to_the_older_ones(console, many_tasks):
    client, seen, path = Client(console.url), [], "/tasks"
    while path:
        status, page, _ = client.request(path)
        assert status == 200
        seen.append(ids_on(page))
        older = re.search(r'href="(/tasks\?[^"]*before=\d+)" id="older"', page)
        path = older[1].replace("&amp;", "&") if older else None
    assert [len(p) for p in seen] == [PAGE_SIZE, PAGE_SIZE, 120 - 2 * PAGE_SIZE]
    assert [i for p in seen for i in p] == sorted(many_tasks, reverse=True)  # every task once, newest first


def test_the_tasks_page_filters_by_status_model_and_sweep(console, console_engine, many_tasks):
    with console_engine.begin() as conn:  # a sweep's trials carry the task options sweep and trial (issue 22)
        conn.execute(text("""UPDATE training_tasks SET options = jsonb_build_object('sweep', 'lr-search', 'trial', id)
                             WHERE id = ANY(:ids)"""), {"ids": many_tasks[:3]})
    client = Client(console.url)
    _, failed, _ = client.request("/tasks?status=failed")
    _, model, _ = client.request("/tasks?model=m1&status=")
    _, sweep, _ = client.request("/tasks?sweep=lr-search")
    _, bad, _ = client.request("/tasks?status=exploded")
    assert ids_on(failed) == sorted(many_tasks[::10], reverse=True)
    assert ids_on(model) == sorted(many_tasks[1::3], reverse=True)[:PAGE_SIZE]
    assert ids_on(sweep) == sorted(many_tasks[:3], reverse=True) and f"sweep lr-search trial {many_tasks[0]}" in sweep
    assert "status &#39;exploded&#39; is not one of queued, running, succeeded, failed, cancelled" in bad


def test_a_post_without_a_session_or_without_the_csrf_token_gets_403_and_changes_nothing(console, console_engine, many_tasks):
    queue, task_id = TaskQueue(console_engine), many_tasks[-1]
    count = len(queue.list(limit=1000))
    anonymous, user = Client(console.url), Client(console.url)
    anonymous_token = anonymous.csrf()  # a session with a token, but not logged in
    token = user.log_in()
    refused = [
        anonymous.request(f"/tasks/{task_id}/cancel", {}),
        anonymous.request(f"/tasks/{task_id}/cancel", {"csrf_token": anonymous_token}),
        user.request(f"/tasks/{task_id}/cancel", {}),
        user.request(f"/tasks/{task_id}/cancel", {"csrf_token": anonymous_token}),
        user.request("/submit", {"model_name": "x", "sources": "dataset1", "classes": "cooking,drinking"}),
        Client(console.url).request("/models/x/rollback", {"version": "1"}),
    ]
    assert [status for status, _, _ in refused] == [403] * 6
    assert queue.get(task_id).status == "queued" and len(queue.list(limit=1000)) == count
    status, _, headers = user.request(f"/tasks/{task_id}/cancel", {"csrf_token": token, "next": "/tasks"})
    assert (status, headers["location"], queue.get(task_id).status) == (303, "/tasks", "cancelled")  # the same POST with both: done


def test_a_wrong_password_is_refused(console):
    client = Client(console.url)
    status, page, _ = client.request("/login", {"csrf_token": client.csrf(), "password": "guess", "next": "/tasks"})
    assert status == 401 and "wrong password" in page
    assert client.request("/logout", {"csrf_token": client.csrf()})[0] == 403  # still not logged in


def test_every_answer_carries_the_security_headers_and_a_strict_http_only_session_cookie(console):
    client = Client(console.url)
    status, _, headers = client.request("/login")
    assert status == 200
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert (headers["x-frame-options"], headers["x-content-type-options"]) == ("DENY", "nosniff")
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.request("/static/console.js")[2]["content-security-policy"] == csp


def test_user_supplied_text_is_escaped(console, console_engine, console_settings):
    queue = TaskQueue(console_engine)
    task_id = queue.submit({"model_name": "xss", "sources": ["dataset1"], "classes": ["cooking", SCRIPT]})
    folder = console_settings.model_tasks_dir / f"task-{task_id}-xss"
    folder.mkdir()
    (folder / "train.log").write_text(f"line 1\n{SCRIPT}\n")
    with console_engine.begin() as conn:
        conn.execute(text("UPDATE training_tasks SET status = 'failed', error = :e, task_dir = :d WHERE id = :id"),
                     {"e": f"bad {SCRIPT}", "d": str(folder), "id": task_id})
    pages = [Client(console.url).request(path)[1] for path in ("/tasks", f"/tasks/{task_id}")]
    for page in pages:
        assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "line 1\n&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1]  # the log tail, as text


def test_every_task_page_has_a_json_twin(console, many_tasks):
    import json

    client = Client(console.url)
    status, body, headers = client.request("/tasks.json?status=failed&model=m0")
    page = json.loads(body)
    assert (status, headers["content-type"]) == (200, "application/json")
    assert [t["id"] for t in page["tasks"]] == [many_tasks[i] for i in (90, 60, 30, 0)]  # every 10th failed, every 3rd is m0
    assert page["tasks"][0]["state"]["status"] == "failed" and page["counts"]["failed"] >= 12 and page["next_before"] is None
    one = json.loads(client.request(f"/tasks/{many_tasks[0]}.json")[1])
    assert (one["id"], one["error"], one["runs"]) == (many_tasks[0], "boom", [])
    assert client.request("/tasks/999999.json")[0] == 404


# -- sweeps (issue 22): made with the sweep code, trials ended with the queue's own operations ----
def end_trials(store, sweep: dict, accuracies: list[float]) -> None:
    """Claim and end the sweep's next trials as successes whose best epoch reached each accuracy."""
    from pytrain.outcome import Outcome

    queue = TaskQueue(store.engine)
    for accuracy in accuracies:
        run = queue.claim("http-test", 60)
        assert run is not None and run.task["options"]["sweep"] == sweep["name"]
        history = [{"epoch": 1, "val_accuracy": accuracy - 0.1}, {"epoch": 2, "val_accuracy": accuracy}]
        assert queue.finish(run, Outcome.SUCCEEDED, metrics={"history": history})
        store.settle(sweep["id"])


def test_the_sweep_pages_show_its_trials_the_best_and_the_importances_as_sweep_show_and_list_do(console, console_engine, console_settings):
    import json

    store, sweep = make_sweep(console_engine, console_settings, "lr-console")
    end_trials(store, sweep, [0.5, 0.9, 0.6, 0.7])  # four completed: importances; trial 4 queued
    shown, client = store.summary("lr-console"), Client(console.url)
    listed = next(s for s in json.loads(client.request("/sweeps.json")[1])["sweeps"] if s["name"] == "lr-console")
    assert (listed["ended"], listed["trials"], listed["best_trial"], listed["best_value"]) == (4, 6, 1, pytest.approx(0.9))
    twin = json.loads(client.request("/sweeps/lr-console.json")[1])  # what `pytrain sweep show --json` prints
    assert (twin["trials"], twin["best_trial"], twin["importances"]) == (json.loads(json.dumps(shown["trials"])), 1, shown["importances"])
    _, listing, _ = client.request("/sweeps")
    row = re.search(r'<tr id="sweep-lr-console">.*?</tr>', listing, re.S)[0]
    assert '<a href="/sweeps/lr-console">lr-console</a>' in row and "4 / 6" in row and "val_accuracy 0.9 (trial 1)" in row
    _, page, _ = client.request("/sweeps/lr-console")
    rows = re.findall(r'<tr data-task-id="(\d+)" id="trial-(\d+)" ?(class="best")?>(.*?)</tr>', page, re.S)
    assert [(int(task), int(number), bool(best)) for task, number, best, _ in rows] == [
        (t["task_id"], t["number"], t["number"] == 1) for t in shown["trials"]]
    best = rows[1][3]
    assert "★ best" in best and f'<a href="/tasks/{shown["trials"][1]["task_id"]}">' in best and ">succeeded<" in best
    assert f"learning_rate={shown['trials'][1]['params']['learning_rate']:.4g}" in best and '"best-metric">0.9<' in best
    assert ">queued<" in rows[4][3] and "learning_rate" in re.search(r'id="importances">.*?</table>', page, re.S)[0]
    _, tasks, _ = Client(console.url).request("/tasks?sweep=lr-console")
    assert f'<a class="help" href="/sweeps/lr-console">sweep lr-console trial 4</a>' in tasks  # a trial links to its sweep
    assert client.request("/sweeps/no-such-sweep")[0] == 404 and client.request("/sweeps/no-such-sweep.json")[0] == 404


def test_cancelling_a_sweep_needs_the_session_and_csrf_token_then_cancels_its_queued_trials(console, console_engine, console_settings):
    store, sweep = make_sweep(console_engine, console_settings, "cancel-console", trials=4, parallel=2)
    queued = [t["task_id"] for t in store.trials(sweep["id"])]
    anonymous, user = Client(console.url), Client(console.url)
    anonymous_token = anonymous.csrf()
    token = user.log_in()
    refused = [anonymous.request("/sweeps/cancel-console/cancel", {}),
               anonymous.request("/sweeps/cancel-console/cancel", {"csrf_token": anonymous_token}),
               user.request("/sweeps/cancel-console/cancel", {}),
               user.request("/sweeps/cancel-console/cancel", {"csrf_token": anonymous_token})]
    assert [status for status, _, _ in refused] == [403] * 4
    assert store.get("cancel-console")["status"] == "running" and [t["status"] for t in store.trials(sweep["id"])] == ["queued"] * 2
    assert 'id="cancel-sweep"' in user.request("/sweeps/cancel-console")[1]
    status, _, headers = user.request("/sweeps/cancel-console/cancel", {"csrf_token": token})
    assert (status, headers["location"]) == (303, "/sweeps/cancel-console")
    assert store.get("cancel-console")["status"] == "cancelled"
    assert [(t["task_id"], t["status"]) for t in store.trials(sweep["id"])] == [(i, "cancelled") for i in queued]  # none created
    _, page, _ = user.request("/sweeps/cancel-console")
    assert "sweep cancel-console cancelled (2 trial task(s) cancelled)" in page and 'id="cancel-sweep"' not in page


def test_text_on_the_sweep_pages_is_escaped(console, console_engine, console_settings):
    store, sweep = make_sweep(console_engine, console_settings, "escape-console", trials=1)
    [trial] = store.trials(sweep["id"])
    with console_engine.begin() as conn:  # a trial that failed with markup in its error; a task naming a sweep in markup
        conn.execute(text("UPDATE training_tasks SET status = 'failed', error = :e WHERE id = :id"),
                     {"e": f"bad {SCRIPT}", "id": trial["task_id"]})
    task_id = TaskQueue(console_engine).submit({"model_name": "xss-sweep", "sources": ["dataset1"], "classes": ["cooking", "drinking"],
                                                "options": {"sweep": SCRIPT}})
    client = Client(console.url)
    pages = [client.request(path)[1] for path in ("/sweeps/escape-console", "/tasks?model=xss-sweep", f"/tasks/{task_id}")]
    for page in pages:
        assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert all('href="/sweeps/%3Cscript%3Ealert%281%29%3C/script%3E"' in page for page in pages[1:])
