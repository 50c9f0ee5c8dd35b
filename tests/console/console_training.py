"""A stand-in for ``python -m pytrain.training`` in the console's tests: trains nothing, but leaves
what a run leaves, at a pace a browser can follow.

Usage: ``console_training.py --task-dir DIR --sources-root ROOT`` (the LocalRunner's arguments).
Environment: ``CONSOLE_MODEL_DIR`` holds a ``model.onnx`` and ``tensor_spec.json`` made by the test
for the class list and clip size it submits; ``CONSOLE_EPOCH_SECONDS`` is the time per epoch.

Writes its pid to ``stub.pid``; per epoch (``epochs`` of ``task.json``) a ``progress.jsonl`` record
and a ``train.log`` line (stdout); after the last one the model files, ``metrics.json`` with
per-class figures and a confusion matrix, and a ``done`` record.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path


def main() -> None:
    task_dir = Path(sys.argv[sys.argv.index("--task-dir") + 1])
    (task_dir / "stub.pid").write_text(str(os.getpid()))
    task = json.loads((task_dir / "task.json").read_text())
    epochs, classes = task["epochs"], task["class_list"]
    pace = float(os.environ.get("CONSOLE_EPOCH_SECONDS", "1.0"))
    for epoch in range(1, epochs + 1):
        time.sleep(pace)
        with open(task_dir / "progress.jsonl", "a") as progress:
            progress.write(json.dumps({"event": "epoch", "epoch": epoch, "epochs": epochs, "train_loss": 1.0 / epoch,
                                       "train_accuracy": 0.5 + 0.1 * epoch / epochs, "val_loss": 1.2 / epoch,
                                       "val_accuracy": 0.4 + 0.1 * epoch / epochs, "time": time.time()}) + "\n")
        print(f"epoch {epoch}/{epochs} loss {1.0 / epoch:.3f}", flush=True)
    for name in ("model.onnx", "tensor_spec.json"):
        shutil.copyfile(Path(os.environ["CONSOLE_MODEL_DIR"]) / name, task_dir / name)
    per_class = {c: {"precision": 0.75, "recall": 0.5 + 0.5 * (i == 0), "f1": 0.7, "support": 2} for i, c in enumerate(classes)}
    matrix = [[2 if i == j else 0 for j in range(len(classes))] for i in range(len(classes))]
    metrics = {"test_accuracy": 0.75, "class_list": classes, "epochs_run": epochs,
               "splits": {"test": {"per_class": per_class, "confusion_matrix": matrix, "macro_f1": 0.7}}}
    (task_dir / "metrics.json").write_text(json.dumps(metrics))
    with open(task_dir / "progress.jsonl", "a") as progress:
        progress.write(json.dumps({"event": "done", "test_accuracy": 0.75, "time": time.time()}) + "\n")
    print("done", flush=True)


if __name__ == "__main__":
    main()
