"""The console in a real headless Chromium (selenium, Debian's chromium-driver) against a real
PostgreSQL, a real orchestrator process (the LocalRunner on a paced stub training, the real
publisher) and the session's real Triton.

With ``PYTRAIN_CONSOLE_SCREENSHOTS=DIR`` the tests also save a PNG of each main page there
(``scripts/console_screenshots.sh`` writes the documentation's into docs/images/).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import text

from console_stub import CLASSES, CLIP, ORCHESTRATOR_GPUS, make_sweep
from fixtures.console import browser_available, log_in, webdriver, MISSING_DRIVER
from fixtures.processes import wait_for
from fixtures.triton import make_task_folder, task_record
from pytrain.db import TaskQueue

pytestmark = [pytest.mark.triton, pytest.mark.skipif(not browser_available(), reason=MISSING_DRIVER)]
USES_TRITON = True  # conftest: the console and the orchestrator publish into the session's Triton
SCRIPT = "<script>alert(1)</script>"
SCREENSHOTS = os.environ.get("PYTRAIN_CONSOLE_SCREENSHOTS")


@pytest.fixture(scope="module")
def driver(console):
    """One logged-in browser for the module."""
    session = webdriver()
    try:
        log_in(session, console.url)
        yield session
    finally:
        session.quit()


def screenshot(driver, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"console-{name}.png"))


def by_css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def text_of(driver, selector: str) -> str:
    """The element's text; ``""`` while the page is being replaced (a click that navigates)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return by_css(driver, selector).text
    except StaleElementReferenceException:
        return ""


def after_click(driver, check, timeout: float = 60.0):
    """Wait until ``check(driver)`` is true on the page a click led to (a page being replaced answers
    some commands with errors, e.g. when the answer has the same URL)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,)).until(check)


def fill_form(driver, console, values: dict[str, str]) -> None:
    driver.get(f"{console.url}/submit")
    for name, value in values.items():
        field = by_css(driver, f"[name='{name}']")
        field.clear()
        field.send_keys(value)
    by_css(driver, "#submit-button").click()


def running(queue: TaskQueue, task_id: int, settings) -> int:
    """Wait until the stub training of ``task_id`` runs; its pid."""
    wait_for(lambda: queue.get(task_id).status == "running" and queue.get(task_id).task_dir, f"task {task_id} running", timeout=60)
    pid_file = Path(queue.get(task_id).task_dir) / "stub.pid"
    wait_for(pid_file.exists, f"task {task_id}'s training started", timeout=60)
    return int(pid_file.read_text())


def test_a_task_submitted_in_the_form_goes_from_queued_to_succeeded_live_and_its_version_appears_under_models(
        driver, console, console_engine, console_settings, orchestrator):
    queue = TaskQueue(console_engine)
    blocker = queue.submit({"model_name": "blocker", "sources": ["dataset1"], "classes": CLASSES, "epochs": 1000})
    running(queue, blocker, console_settings)  # the one worker is busy: the submitted task waits in the queue
    fill_form(driver, console, {"model_name": "console_kitchen", "sources": "dataset1", "classes": ",".join(CLASSES),
                                "epochs": "4", **{k: str(v) for k, v in CLIP.items()}})
    assert by_css(driver, "#flash").text.startswith("task ")
    task_id = int(by_css(driver, "[data-task-id]").get_attribute("data-task-id"))
    driver.execute_script("window.notReloaded = true;")
    seen: list[tuple[str, float]] = []

    def watch() -> bool:
        status = by_css(driver, ".task-head [data-field='status']").text
        percent = float(by_css(driver, ".task-head progress").get_attribute("value"))
        if not seen or seen[-1] != (status, percent):
            seen.append((status, percent))
        if len(seen) == 1:
            queue.cancel(blocker)  # the page showed the task queued: let the worker take it
        return status == "succeeded"

    wait_for(watch, "the page showing the task succeeded", timeout=120, step=0.1)
    assert driver.execute_script("return window.notReloaded === true;")  # no reload: the page updated itself
    statuses = [status for status, _ in seen]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "succeeded"
    moving = sorted({percent for status, percent in seen if status == "running" and 0 < percent < 100})
    assert len(moving) >= 2, seen  # the bar moved through the epochs
    assert seen[-1][1] == 100.0 and by_css(driver, ".task-head [data-field='version']").text == "1"
    assert not by_css(driver, f"#cancel-{task_id}").is_displayed() and not by_css(driver, f"#retry-{task_id}").is_displayed()
    by_css(driver, "[data-show='ended'] a").click()  # the note the page showed at the end: the final figures
    assert by_css(driver, "svg[aria-label='val_accuracy'] polyline").get_attribute("points").count(",") == 4  # one point per epoch
    assert "succeeded" in by_css(driver, "table.runs").text and "epoch 4/4" in by_css(driver, "#log").text
    assert by_css(driver, "table.confusion").text.split() == ["cooking", "drinking", "cooking", "2", "0", "drinking", "0", "2"]
    screenshot(driver, "task")

    def models_row() -> str:
        driver.get(f"{console.url}/models")
        row = by_css(driver, "#model-console_kitchen-1").text
        return row if "READY" in row else ""  # Triton loads the new version in the background

    row = wait_for(models_row, "version 1 READY on the Models page", timeout=60, step=0.5)
    assert "cooking, drinking" in row and "8x32x32" in row and "0.750 yes" in row
    driver.get(f"{console.url}/tasks")
    screenshot(driver, "tasks")


def test_a_bad_value_in_the_form_is_shown_beside_its_field_and_inserts_nothing(driver, console, console_engine):
    queue = TaskQueue(console_engine)
    before = len(queue.list(limit=10_000))
    base = {"model_name": "bad_form", "sources": "dataset1", "classes": ",".join(CLASSES)}
    fill_form(driver, console, {**base, "epochs": "0"})
    epochs = by_css(driver, ".field.invalid #error-epochs")
    assert "greater than or equal to 1" in epochs.text
    assert by_css(driver, "#field-epochs").get_attribute("value") == "0"  # the form keeps what was typed
    fill_form(driver, console, {**base, "classes": "cooking,nosuchclass"})
    classes = by_css(driver, ".field.invalid #error-classes")
    assert "['nosuchclass'] have no folder" in classes.text
    screenshot(driver, "submit-error")
    assert len(queue.list(limit=10_000)) == before


def test_cancelling_a_running_task_from_its_page_stops_the_run_within_seconds(driver, console, console_engine, console_settings, orchestrator):
    from orchestrator.test_local_runner import pid_alive

    queue = TaskQueue(console_engine)
    task_id = queue.submit({"model_name": "long_run", "sources": ["dataset1"], "classes": CLASSES, "epochs": 1000})
    pid = running(queue, task_id, console_settings)
    driver.get(f"{console.url}/workers")
    worker = by_css(driver, f"#workers tr[data-task-id='{task_id}']").text
    assert worker.startswith("console-worker") and f"{task_id} (long_run)" in worker  # the live orchestrator and its task
    screenshot(driver, "workers")
    driver.get(f"{console.url}/tasks/{task_id}")
    by_css(driver, f"#cancel-{task_id}").click()
    wait_for(lambda: text_of(driver, ".task-head [data-field='status']") == "cancelled", "the page showing cancelled", timeout=30)
    wait_for(lambda: not pid_alive(pid), "the stub training stopped", timeout=15)
    wait_for(lambda: queue.runs(task_id)[-1].outcome is not None, "the run's end recorded", timeout=15)
    assert queue.runs(task_id)[-1].outcome.value == "cancelled"


def test_rolling_back_from_the_models_page_makes_triton_serve_that_version(driver, console, console_settings, tmp_path):
    import tritonclient.grpc as grpcclient

    from pytrain.publish import publish_task

    for version, classes in ((1, ["cooking", "drinking"]), (2, ["cooking", "drinking", "eating"])):  # v2 is served alone
        folder = make_task_folder(tmp_path / f"v{version}", model_name="console_rollback", task_id=version, class_list=classes)
        publish_task(folder, settings=console_settings, task_record=task_record("console_rollback", version))
    url = console_settings.triton_grpc_url
    with grpcclient.InferenceServerClient(url) as client:
        wait_for(lambda: client.is_model_ready("console_rollback", "2"), "version 2 served", timeout=60)
        assert not client.is_model_ready("console_rollback", "1")
    driver.get(f"{console.url}/models")
    by_css(driver, "#rollback-console_rollback-1").click()
    assert "model console_rollback: serving [1]" in by_css(driver, "#flash").text
    with grpcclient.InferenceServerClient(url) as client:
        wait_for(lambda: client.is_model_ready("console_rollback", "1"), "version 1 served after the rollback", timeout=60)
        assert not client.is_model_ready("console_rollback", "2")
    assert by_css(driver, "#model-console_rollback-1 [data-field='served']").text == "yes"
    screenshot(driver, "models")


def test_a_class_name_and_an_error_holding_a_script_are_shown_as_text(driver, console, console_engine):
    from selenium.common.exceptions import NoAlertPresentException

    queue = TaskQueue(console_engine)
    task_id = queue.submit({"model_name": "xss", "sources": ["dataset1"], "classes": ["cooking", SCRIPT]})
    with console_engine.begin() as conn:
        conn.execute(text("UPDATE training_tasks SET status = 'failed', error = :e WHERE id = :id"), {"e": f"bad {SCRIPT}", "id": task_id})
    for path in ("/tasks", f"/tasks/{task_id}"):
        driver.get(console.url + path)
        assert SCRIPT in by_css(driver, "main").text
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text
        scripts = driver.execute_script("return Array.from(document.scripts).map(s => s.src + '|' + s.textContent);")
        assert scripts == [f"{console.url}/static/console.js|"]


def test_the_sources_page_shows_each_dataset_s_classes_and_its_bad_files_with_reasons(driver, console, console_engine):
    from pytrain.db import VideoCatalog
    from console_stub import LAYOUT

    rows = []
    for folder, count in LAYOUT["dataset1"].items():
        for i in range(count):
            bad = folder == "eating" and i == 0
            rows.append({"dataset": "dataset1", "path": f"{folder}/clip_{i:03d}.mp4", "size_bytes": 1000 + i, "mtime_ns": i,
                         "content_hash": f"{folder}{i}", "duration_s": None if bad else 2.0, "frame_count": None if bad else 30,
                         "fps": None if bad else 15.0, "width": None if bad else 96, "height": None if bad else 64,
                         "codec": None if bad else "h264", "pixel_format": None if bad else "yuv420p",
                         "status": "bad" if bad else "ok", "reason": f"moov atom not found {SCRIPT}" if bad else None})
    VideoCatalog(console_engine).upsert(rows)
    driver.get(f"{console.url}/sources")
    section = by_css(driver, "#dataset-dataset1").text
    assert "15 files, 14 good" in section
    assert "cooking 5 bread" in section and "eating 4" in section
    assert f"eating/clip_000.mp4 moov atom not found {SCRIPT}" in section
    screenshot(driver, "sources")


def test_the_workers_page_shows_the_live_orchestrator_s_runner_and_gpus(driver, console, console_engine, orchestrator):
    queue = TaskQueue(console_engine)
    wait_for(lambda: any(w["worker_id"] == "console-worker" for w in queue.workers()["live"]), "the orchestrator's lock", timeout=60)
    driver.get(f"{console.url}/workers")
    row = "#workers tr[data-worker-id='console-worker']"
    assert (text_of(driver, f"{row} [data-field='runner']"), text_of(driver, f"{row} [data-field='gpus']")) == ("local", ORCHESTRATOR_GPUS)


def test_a_sweep_the_orchestrator_ran_shows_its_trials_and_its_best(driver, console, console_engine, console_settings, orchestrator):
    from selenium.webdriver.common.by import By

    store, _ = make_sweep(console_engine, console_settings, "browser-lr", trials=2, parallel=2, epochs=1)
    wait_for(lambda: store.get("browser-lr")["status"] == "finished", "the orchestrator ran both trials", timeout=120)
    driver.get(f"{console.url}/sweeps")
    listed = by_css(driver, "#sweep-browser-lr").text
    assert "finished" in listed and "2 / 2" in listed and "val_accuracy 0.5 (trial " in listed  # the stub's last val_accuracy
    by_css(driver, "#sweep-browser-lr a").click()
    after_click(driver, lambda d: by_css(d, "h1").text.startswith("Sweep browser-lr"))
    trials = {row.get_attribute("id"): row for row in driver.find_elements(By.CSS_SELECTOR, "#trials tbody tr")}
    assert sorted(trials) == ["trial-0", "trial-1"]
    assert [row.find_element(By.CSS_SELECTOR, "[data-field='status']").text for row in trials.values()] == ["succeeded"] * 2
    [best] = driver.find_elements(By.CSS_SELECTOR, "#trials tr.best")
    assert "★ best" in best.text and best.find_element(By.CSS_SELECTOR, "[data-field='best-metric']").text == "0.5"
    screenshot(driver, "sweep")
    number = best.get_attribute("id").removeprefix("trial-")
    best.find_element(By.CSS_SELECTOR, "a[href^='/tasks/']").click()  # the trial's task
    after_click(driver, lambda d: "browser-lr-model" in by_css(d, "h1").text)
    assert text_of(driver, "#sweep-link") == f"sweep browser-lr trial {number}"  # and the task links back to its sweep


def test_cancelling_a_sweep_from_its_page_cancels_its_running_and_queued_trials(driver, console, console_engine, console_settings,
                                                                               orchestrator):
    from orchestrator.test_local_runner import pid_alive

    store, sweep = make_sweep(console_engine, console_settings, "browser-cancel", trials=4, parallel=2, epochs=1000)
    queue = TaskQueue(console_engine)
    [first, second] = [t["task_id"] for t in store.trials(sweep["id"])]
    pid = running(queue, first, console_settings)  # the orchestrator runs one; the other waits in the queue
    assert queue.get(second).status == "queued"
    driver.get(f"{console.url}/sweeps/browser-cancel")
    by_css(driver, "#cancel-sweep").click()
    after_click(driver, lambda d: by_css(d, "#flash").text)  # the answer has the same URL: its flash tells it
    assert text_of(driver, "#flash") == "sweep browser-cancel cancelled (2 trial task(s) cancelled)"
    assert text_of(driver, "#sweep-status") == "cancelled"
    assert [(t["task_id"], t["status"]) for t in store.trials(sweep["id"])] == [(first, "cancelled"), (second, "cancelled")]
    wait_for(lambda: not pid_alive(pid), "the running trial's training stopped", timeout=15)
    assert store.get("browser-cancel")["status"] == "cancelled" and len(store.trials(sweep["id"])) == 2  # no trial created after
