"""Take the documentation's screenshot of a demo run in MLflow's UI with a real headless browser.

    .venv/bin/python scripts/screenshots.py      # writes docs/images/tracking-run.png

Runs ``pytrain demo`` (tracking on, the default) in a temporary folder, starts ``pytrain tracking
ui`` on its store, and has Debian's headless Chromium (``apt-get install chromium``) take the
demo run's page. The browser helpers are the tests' (``tests/fixtures/browser.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.browser import CHROMIUM, MISSING, TrackingUi, chromium, dump_dom_until, run_page  # noqa: E402

OUTPUT = ROOT / "docs" / "images" / "tracking-run.png"
WINDOW = "1400,900"


def demo_env(folder: Path) -> dict[str, str]:
    """PyTrain's environment with every folder (and so the embedded PostgreSQL) under ``folder``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PYTRAIN_") or key == "PYTRAIN_LOG_LEVEL"}
    for name in ("data", "sources", "model_repo", "model_tasks", "results"):
        env[f"PYTRAIN_{name.upper()}_DIR"] = str(folder / name)
    return env


def main() -> int:
    """Demo, UI, screenshot; exit status 1 with the reason when a step fails."""
    if not CHROMIUM.exists():
        print(f"error: {MISSING}", file=sys.stderr)
        return 1
    from pytrain.serving import free_port

    with tempfile.TemporaryDirectory(prefix="pytrain-screenshots-") as temp:
        folder = Path(temp)
        env = demo_env(folder)
        pytrain = str(Path(sys.executable).with_name("pytrain"))
        subprocess.run([pytrain, "demo", "--model-name", "kitchen"], env=env, check=True)
        with TrackingUi(env, folder / "ui.log", free_port()) as ui:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=ui.url)
            experiment = client.get_experiment_by_name("kitchen")
            run = client.search_runs([experiment.experiment_id], max_results=1)[0]
            page = run_page(ui.url, experiment.experiment_id, run.info.run_id)
            # Wait until the page renders the run (then the screenshot shows it, not a spinner).
            dump_dom_until(page, lambda dom: run.info.run_name in dom and "val_accuracy" in dom, "the demo run")
            OUTPUT.parent.mkdir(parents=True, exist_ok=True)
            chromium(page, f"--screenshot={OUTPUT}", f"--window-size={WINDOW}")
    print(f"wrote {OUTPUT.relative_to(ROOT)} ({OUTPUT.stat().st_size // 1024} KiB): {run.info.run_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
