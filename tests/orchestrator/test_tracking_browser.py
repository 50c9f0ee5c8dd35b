"""``pytrain tracking ui`` serves MLflow's UI on 127.0.0.1, and a run's page loads in a real headless
Chromium (Debian's, ``fixtures.browser``): a run logged by an orchestrator to the real ``mlflow
server`` of ``fixtures.mlflow``, then the UI started on the same store as a real process.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from fixtures.browser import CHROMIUM, MISSING, TrackingUi, dump_dom_until, run_page
from fixtures.processes import orchestrator_env
from pytrain.serving import free_port
from test_mlflow_tracking import EPOCHS, submit_and_start, tracked_run

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=MISSING)


def test_a_run_page_of_pytrain_tracking_ui_loads_in_headless_chromium(tracking_settings, engine, synced, mlflow_server, tmp_path):
    queue, task_id, uid, runner, worker, thread = submit_and_start(tracking_settings, engine)
    for _ in range(EPOCHS):
        runner.allow.release()
    thread.join(120)
    assert worker.tracker.wait(120)
    worker.close()
    assert queue.get(task_id)["status"] == "succeeded"
    run = tracked_run(MlflowClient(tracking_uri=mlflow_server.url), uid)

    # The UI on the server's own store (a database URI: `tracking ui` serves a store, not a server).
    env = orchestrator_env(tracking_settings, "ui", lease_seconds=30, heartbeat_seconds=1, poll_seconds=1,
                           PYTRAIN_MLFLOW_TRACKING_URI=mlflow_server.backend_uri)
    with TrackingUi(env, tmp_path / "ui.log", free_port()) as ui:
        assert ui.url.startswith("http://127.0.0.1:")
        name = f"task-{task_id}-kitchen"
        dom = dump_dom_until(run_page(ui.url, run.info.experiment_id, run.info.run_id), lambda dom: name in dom,
                             f"the run name {name}")
    assert run.info.run_id in dom
