"""A stand-in for ``python -m pytrain.training`` that trains slowly and resumes, for the fencing tests.

Usage: ``python fencing_training.py --task-dir DIR --sources-root ROOT``, with the environment:

- ``STUB_EPOCHS`` (default 6) epochs of ``STUB_EPOCH_SECONDS`` (default 0.5) each;
- ``STUB_ARTIFACTS``: a folder holding ``model.onnx`` and ``tensor_spec.json`` (a real, checked
  model: :func:`fixtures.triton.make_task_folder`), copied into the task folder at the end so the
  worker's real publisher can publish it.

Like the real entrypoint it holds the task folder's run lock (:class:`pytrain.training.run_lock.RunLock`)
for the whole run, and exits with ``RUN_LOCKED_EXIT_CODE`` when another run holds it. After each
epoch it writes a progress line and ``checkpoint_stub.json`` (atomically); on start it resumes
after the checkpoint's epoch and appends ``<pid> <first epoch>`` to ``starts.txt``, so a test sees
where each run started.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

from pytrain.training.run_lock import RunLock, RunLockedError

CHECKPOINT = "checkpoint_stub.json"


def main() -> int:
    task_dir = Path(sys.argv[sys.argv.index("--task-dir") + 1])
    try:
        with RunLock(task_dir):
            train(task_dir)
    except RunLockedError as exc:  # as python -m pytrain.training does
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def train(task_dir: Path) -> None:
    epochs = int(os.environ.get("STUB_EPOCHS", "6"))
    seconds = float(os.environ.get("STUB_EPOCH_SECONDS", "0.5"))
    try:
        done = json.loads((task_dir / CHECKPOINT).read_text())["epoch"]
    except FileNotFoundError:
        done = 0
    with open(task_dir / "starts.txt", "a") as starts:
        starts.write(f"{os.getpid()} {done + 1}\n")
    for epoch in range(done + 1, epochs + 1):
        time.sleep(seconds)
        with open(task_dir / "progress.jsonl", "a") as progress:
            progress.write(json.dumps({"event": "epoch", "epoch": epoch, "epochs": epochs, "train_loss": 1.0 / epoch}) + "\n")
        tmp = task_dir / f"{CHECKPOINT}.tmp"
        tmp.write_text(json.dumps({"epoch": epoch}))
        os.replace(tmp, task_dir / CHECKPOINT)
    artifacts = Path(os.environ["STUB_ARTIFACTS"])
    for name in ("model.onnx", "tensor_spec.json"):
        shutil.copy(artifacts / name, task_dir / name)
    (task_dir / "metrics.json").write_text(json.dumps({"test_accuracy": 0.75, "epochs_run": epochs}))
    with open(task_dir / "progress.jsonl", "a") as progress:
        progress.write(json.dumps({"event": "done", "test_accuracy": 0.75}) + "\n")
    print("fencing stub training done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
