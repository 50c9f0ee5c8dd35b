"""A stand-in for ``python -m pytrain.training`` used to test runners and workers for real.

Usage: ``python stub_training.py MODE --task-dir DIR --sources-root ROOT``. Modes:

- ``succeed``: write two epochs of progress, a ``done`` event and ``metrics.json``; exit 0.
- ``fail``: print a traceback-like line; exit 3.
- ``hang``: start a grandchild (``sleep 600``, pid in ``grandchild.pid``), ignore SIGTERM, sleep.
- ``env``: write ``CUDA_VISIBLE_DEVICES`` to ``env.txt``; exit 0.
- ``hang-then-succeed``: ``hang`` on the first run in a task folder, ``succeed`` on the next one.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def succeed(task_dir: Path) -> None:
    with open(task_dir / "progress.jsonl", "a") as progress:
        for epoch in (1, 2):
            progress.write(json.dumps({"event": "epoch", "epoch": epoch, "epochs": 2, "train_loss": 1.0 / epoch,
                                       "train_accuracy": 0.5, "val_loss": 0.9, "val_accuracy": 0.5 + epoch / 10,
                                       "clips_per_second": 10.0}) + "\n")
        progress.write(json.dumps({"event": "done", "test_accuracy": 0.75}) + "\n")
    (task_dir / "metrics.json").write_text(json.dumps({"test_accuracy": 0.75, "epochs_run": 2}))
    print("stub training done", flush=True)


def hang(task_dir: Path) -> None:
    child = subprocess.Popen(["sleep", "600"])
    (task_dir / "grandchild.pid").write_text(str(child.pid))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # forces the runner to escalate to SIGKILL
    print("stub training hanging", flush=True)
    (task_dir / "hanging").write_text(str(os.getpid()))
    time.sleep(600)


def main() -> None:
    mode = sys.argv[1]
    task_dir = Path(sys.argv[sys.argv.index("--task-dir") + 1])
    assert Path(sys.argv[sys.argv.index("--sources-root") + 1]).is_dir()
    if mode == "succeed":
        succeed(task_dir)
    elif mode == "fail":
        print("epoch 1 ...", flush=True)
        print("ValueError: the manifest names no training clip", file=sys.stderr, flush=True)
        sys.exit(3)
    elif mode == "hang":
        hang(task_dir)
    elif mode == "env":
        (task_dir / "env.txt").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    elif mode == "hang-then-succeed":
        marker = task_dir / "first_run"
        if marker.exists():
            succeed(task_dir)
        else:
            marker.write_text("x")
            hang(task_dir)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
