"""Publishing a finished task folder into the Triton model repository, atomically and versioned.

Layout written (``<model>`` = the task's ``model_name``, ``<v>`` = the next integer version)::

    model_repo/<model>/config.pbtxt          GPU serving (onnxruntime_onnx, KIND_GPU); version_policy: the served versions
    model_repo/<model>/configs/cpu.pbtxt     embedded server (python backend, KIND_CPU), same versions
    model_repo/<model>/labels.txt            one class per line (Triton classification), the served versions'
    model_repo/<model>/<model>.config        PyTrain INI config, the served versions'
    model_repo/<model>/history.jsonl         one line per publish / rollback / unpublish (versions.HistoryRecord)
    model_repo/<model>/<v>/model.onnx        the model
    model_repo/<model>/<v>/model.py          Python-backend runner of model.onnx (CPU)
    model_repo/<model>/<v>/tensor_spec.json  the tensor description it was published with
    model_repo/<model>/<v>/labels.txt        its own labels and INI (what rollback serves it with)
    model_repo/<model>/<v>/<model>.config
    results/<model>/<v>/                     metrics.json, skipped.json, plots, task.json (the task row)

Which versions the configs serve (only those the model-level files describe: same classes and clip
size) is :mod:`pytrain.publish.versions`' business; a version that changes them is served alone.

Why it is safe with several publishers and a polling Triton:

- A version is built whole in a staging folder beside the repository (same file system), then
  moved into place with one ``rename``. The rename refuses to replace an existing version
  (``renameat2(RENAME_NOREPLACE)``, or plain ``rename``, which fails on a non-empty directory), so a
  publisher that lost the race for number ``v`` simply tries ``v + 1``: numbers are never reused
  and versions never overwritten.
- The model-level files (configs, labels, INI) are replaced with ``os.replace`` just before the
  version appears, and restored if the version could not be placed. Publishers of one model take
  turns (``flock`` on the model folder, :func:`pytrain.publish.versions.model_lock`), so the
  configs' version list names the number the version then gets.
- Anything that fails before the final rename leaves the repository exactly as it was.

With an orchestrator (``gate``): the slow part (checking the ONNX model, copying it into the
staging folder, fsync) runs while the worker's heartbeat still renews the run's lease; only placing
the version (the renames and the history line, milliseconds) runs inside the worker's transaction
that locks the task row, checks the run still holds it and records the success; Triton is asked to
load the model after that transaction committed. A retry after a failed commit finds the version
this run placed (``history.jsonl`` records the task uid and run id of every publish).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from pytrain import spec as task_files
from pytrain.errors import ConfigurationError, PublishError
from pytrain.publish import triton_config, versions
from pytrain.settings import Settings
from pytrain.spec import TaskSpec, TensorSpec
from pytrain.task_columns import MODEL_NAME_PATTERN

log = logging.getLogger(__name__)

MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
PYTHON_MODEL_FILE = "model.py"
TASK_ROW_FILE = "task.json"
# How many times a publisher retries after losing the race for a version number.
MAX_VERSION_ATTEMPTS = 1000

_RESULT_FILES = (task_files.METRICS, task_files.SKIPPED, task_files.TENSOR_SPEC, *task_files.PLOTS)


@dataclass(frozen=True)
class PublishedModel:
    """A version placed in the model repository.

    Attributes:
        name: the Triton model name.
        version: the integer version (its folder name).
        path: ``model_repo/<name>/<version>``.
        results_path: ``results/<name>/<version>``.
        load_requested: ``True`` when a Triton server (``PYTRAIN_TRITON_GRPC_URL``) loaded it,
            ``False`` when that failed or the server is in poll/none mode (see ``load_message``),
            ``None`` when no server was configured.
        load_message: why the load request did not apply, or ``""``.
        served_versions: the versions the model's configs serve after this publish, ascending.
        serving_note: set when this version changed the classes or the clip size, so older versions
            are no longer served (see :mod:`pytrain.publish.versions`); ``""`` otherwise.
    """

    name: str
    version: int
    path: Path
    results_path: Path | None = None
    load_requested: bool | None = None
    load_message: str = ""
    served_versions: tuple[int, ...] = ()
    serving_note: str = ""


#: ``gate() -> context manager yielding record(published)``: what an orchestrator wraps around
#: placing a version (:func:`publish_task`).
Gate = Callable[[], AbstractContextManager[Callable[[PublishedModel], None]]]


def publish_task(
    task_dir: Path,
    *,
    settings: Settings,
    task_record: dict[str, Any],
    gate: Gate | None = None,
    _before_rename: Callable[[Path, int], None] | None = None,
) -> PublishedModel:
    """Publish the trained model of a task folder as the next version of its Triton model.

    Reads ``task.json`` (the :class:`~pytrain.spec.TaskSpec`: model name, and the epochs, shuffle
    size and batch size the INI records), ``model.onnx`` and ``tensor_spec.json`` (required),
    ``metrics.json``, ``skipped.json`` and the plots (copied to ``results/`` when present).

    Args:
        task_dir: ``model_tasks/task-<id>-<model>/`` after a successful training run.
        settings: uses ``model_repo_dir``, ``results_dir``, ``max_batch_size`` and
            ``triton_grpc_url`` (when set, that Triton is asked to load the model).
        task_record: the ``training_tasks`` row (a mapping), saved as
            ``results/<model>/<v>/task.json`` (values JSON cannot hold, e.g. datetimes, are
            written with ``str``); when it names a model, it must be ``task.json``'s. With ``uid``
            and ``run_id`` the publish is idempotent per run: when ``history.jsonl`` shows this
            run published a version that is still there, that version is returned and nothing is
            published again (the orchestrator retries after a database failure).
        gate: entered (under the model's lock) around placing the version, after the slow
            staging; it yields ``record(published)``, called once the version is in place and
            before the gate's exit (the orchestrator's transaction that records the success:
            ``TaskQueue.success_transaction``). The gate may raise to refuse (nothing is placed);
            what it raises on exit (a failed commit) propagates with the version in place, and a
            retry of the same run finds it. Triton is asked to load the model after the gate's exit.
        _before_rename: test hook called with ``(staged_folder, version)`` just before the final
            rename (to simulate a crash midway).

    Returns:
        The :class:`PublishedModel`.

    Raises:
        PublishError: a missing or invalid input file, an invalid model name or config, or a file
            system error; the repository's earlier versions are left untouched.
    """
    task_dir = Path(task_dir)
    task_spec = _load_task_spec(task_dir)
    model_name = task_spec.model_name
    row_model_name = str(task_record.get("model_name") or model_name)
    for name in (model_name, row_model_name):
        if not MODEL_NAME_RE.match(name):
            raise PublishError(
                f"task folder {task_dir}: model name {name!r} is not a valid Triton model name",
                hint="use 1-64 characters from A-Z a-z 0-9 _ -",
            )
    if row_model_name != model_name:
        raise PublishError(
            f"task folder {task_dir} trains model {model_name!r}, but its task row names {row_model_name!r}",
            hint="publish the task folder the row's task_dir names",
        )
    onnx_path = task_dir / task_files.MODEL_ONNX
    if not onnx_path.is_file() or onnx_path.stat().st_size == 0:
        raise PublishError(f"model {model_name}: no {task_files.MODEL_ONNX} in {task_dir}", hint="the training run exports it; did it finish?")
    try:
        tensor_spec = TensorSpec.load(task_dir)
    except ConfigurationError as exc:
        raise PublishError(f"model {model_name}: {exc.message}", hint=exc.hint) from exc

    # Everything is generated and validated before the file system is touched.
    ini_text = triton_config.pytrain_ini(
        tensor_spec, epochs=task_spec.epochs, shuffle_size=task_spec.shuffle_size, batch_size=task_spec.batch_size
    )
    versions.model_files(model_name, tensor_spec, ini_text, [1], settings)  # validates the configs
    _check_onnx(onnx_path, tensor_spec, model_name)
    try:
        task_row_json = json.dumps(task_record, indent=2, default=str) + "\n"
    except (TypeError, ValueError) as exc:
        raise PublishError(f"model {model_name}: the task row cannot be saved as JSON: {exc}") from exc

    model_dir = settings.model_repo_dir / model_name
    results_model_dir = settings.results_dir / model_name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        results_model_dir.mkdir(parents=True, exist_ok=True)
        version_stage = _staging_folder(settings.model_repo_dir, model_name)
        results_stage = _staging_folder(settings.results_dir, model_name)
    except OSError as exc:
        raise PublishError(f"model {model_name}: cannot prepare {model_dir}: {exc}") from exc
    try:
        _stage_version(version_stage, onnx_path, tensor_spec, ini_text, model_name)
        _stage_results(results_stage, task_dir, task_row_json)
        with versions.model_lock(model_dir), (gate() if gate is not None else nullcontext(_record_nothing)) as record:
            published = _place(version_stage, results_stage, model_dir, results_model_dir, tensor_spec, ini_text,
                               settings, task_record, _before_rename)
            record(published)
    except OSError as exc:
        raise PublishError(f"model {model_name}: publishing failed: {exc}") from exc
    finally:
        for stage in (version_stage, results_stage):
            shutil.rmtree(stage, ignore_errors=True)
            try:  # the staging root disappears when no other publisher is using it
                stage.parent.rmdir()
            except OSError:
                pass

    log.info("published model %s version %d at %s, serving versions %s", model_name, published.version, published.path,
             list(published.served_versions))
    if published.serving_note:
        log.warning("model %s: %s", model_name, published.serving_note)
    if settings.triton_grpc_url:
        from pytrain.publish.loader import request_load

        loaded, message = request_load(settings.triton_grpc_url, model_name, settings=settings)
        published = replace(published, load_requested=loaded, load_message=message)
    return published


existing_versions = versions.existing_versions


def _record_nothing(published: PublishedModel) -> None:
    """The ``record`` of a publish without a gate (``pytrain publish``): nothing to record."""


def _place(
    version_stage: Path,
    results_stage: Path,
    model_dir: Path,
    results_model_dir: Path,
    tensor_spec: TensorSpec,
    ini_text: str,
    settings: Settings,
    task_record: dict[str, Any],
    before_rename: Callable[[Path, int], None] | None,
) -> PublishedModel:
    """Move the staged version and results into place (under the model lock): the next version,
    or the one this run placed already (a retry after its success could not be recorded)."""
    model_name = model_dir.name
    task_uid, run_id = task_record.get("uid"), task_record.get("run_id")
    earlier = versions.published_by_run(model_dir, task_uid, run_id)
    if earlier is None:
        serving = _Serving(model_dir, tensor_spec, ini_text, settings)
        version = _place_version(version_stage, model_dir, results_model_dir, serving.files_for, model_name, before_rename=before_rename)
        versions.append_history(model_dir, serving.record(version, task_record.get("id"), run_id, task_uid))
        served, note = serving.served, serving.note
    else:
        version, served, note = earlier.version, earlier.served, earlier.message
        log.info("model %s: run %s of task %s published version %d already; not publishing again",
                 model_name, earlier.run_id, earlier.task_id, version)
    if earlier is None or not (results_model_dir / str(version)).exists():
        _rename_into(results_stage, results_model_dir / str(version), model_name)
    return PublishedModel(model_name, version, model_dir / str(version), results_model_dir / str(version),
                          served_versions=tuple(served), serving_note=note)


class _Serving:
    """What a new version serves: computed under the model lock for the version number it gets.

    The configs list the new version and the newest older versions compatible with it
    (:func:`pytrain.publish.versions.choose_served`); the labels and INI are the new version's.
    """

    def __init__(self, model_dir: Path, spec: TensorSpec, ini_text: str, settings: Settings) -> None:
        self.model_dir, self.spec, self.ini_text, self.settings = model_dir, spec, ini_text, settings
        self.specs = versions.all_specs(model_dir)
        self.previous = versions.served_by_config(model_dir)
        self.served: list[int] = []
        self.note = ""

    def files_for(self, version: int) -> dict[str, str]:
        specs = {**self.specs, version: self.spec}
        self.served = versions.choose_served(specs, version, self.settings.served_versions)
        dropped = [v for v in self.previous if v not in self.served]
        self.note = ""
        if self.previous and any(not versions.compatible(specs[v], self.spec) for v in self.previous if v in specs):
            old = specs[max(self.previous)]
            self.note = (
                f"version {version} changes the classes or clip size ({_describe(old)} -> {_describe(self.spec)}): "
                f"it is served alone; versions {dropped} stay on disk unserved "
                f"(pytrain rollback {self.model_dir.name} {max(self.previous)} serves them again)"
            )
        return versions.model_files(self.model_dir.name, self.spec, self.ini_text, self.served, self.settings)

    def record(self, version: int, task_id: Any, run_id: Any = None, task_uid: Any = None) -> versions.HistoryRecord:
        return versions.HistoryRecord(
            "publish", time.time(), versions.current_user(), version, self.served, self.previous,
            task_id=int(task_id) if isinstance(task_id, int) else None, message=self.note,
            run_id=int(run_id) if isinstance(run_id, int) else None, task_uid=None if task_uid is None else str(task_uid),
        )


def _describe(spec: TensorSpec) -> str:
    return f"classes {list(spec.class_list)}, clip {spec.num_frames}x{spec.height}x{spec.width}"


def _load_task_spec(task_dir: Path) -> TaskSpec:
    """The task folder's ``task.json``: the model name and the training values the INI records.

    Raises:
        PublishError: no ``task.json`` (not a task folder), or an invalid one.
    """
    if not (task_dir / task_files.TASK_SPEC).is_file():
        raise PublishError(
            f"{task_dir} has no {task_files.TASK_SPEC}, so it is not a task folder and names no model",
            hint="pass a finished task folder model_tasks/task-<id>-<model>/",
        )
    try:
        return TaskSpec.load(task_dir)
    except ConfigurationError as exc:
        raise PublishError(f"task folder {task_dir}: {exc.message}", hint=exc.hint) from exc


def _check_onnx(onnx_path: Path, tensor_spec: TensorSpec, model_name: str) -> None:
    """The ONNX graph's input/output names must be the spec's (Triton and the client use them)."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is part of the train and serve extras
        return
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and friends for a corrupt file
        raise PublishError(f"model {model_name}: {onnx_path} is not a readable ONNX model: {exc}") from exc
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    if tensor_spec.input_name not in inputs or tensor_spec.output_name not in outputs:
        raise PublishError(
            f"model {model_name}: tensor_spec.json names input {tensor_spec.input_name!r} and output "
            f"{tensor_spec.output_name!r}, but {onnx_path} has inputs {inputs} and outputs {outputs}",
            hint="export the model with the names written in tensor_spec.json",
        )


def _staging_folder(target_root: Path, model_name: str) -> Path:
    """A fresh folder on the same file system as ``target_root`` but outside it.

    It lives in ``<parent>/.<target_root name>.staging/`` so that a Triton server polling the
    repository never sees it; a rename from there into the repository is atomic.
    """
    target_root = Path(target_root)
    staging_root = target_root.parent / f".{target_root.name}.staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    if staging_root.stat().st_dev != target_root.stat().st_dev:  # pragma: no cover - unusual mounts
        staging_root = target_root / model_name
    folder = staging_root / f".{model_name}-{uuid.uuid4().hex}"
    folder.mkdir()
    return folder


def _copy_synced(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb") as handle:
        os.fsync(handle.fileno())


def _write_synced(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _stage_version(stage: Path, onnx_path: Path, tensor_spec: TensorSpec, ini_text: str, model_name: str) -> None:
    # The version describes itself: its labels, tensor spec and INI travel with it (rollback uses them).
    _copy_synced(onnx_path, stage / task_files.MODEL_ONNX)
    _copy_synced(Path(__file__).resolve().parents[1] / "serving" / "python_model.py", stage / PYTHON_MODEL_FILE)
    tensor_spec.save(stage)
    _write_synced(stage / triton_config.LABELS_FILE, triton_config.labels_text(tensor_spec))
    _write_synced(stage / versions.ini_file(model_name), ini_text)


def _stage_results(stage: Path, task_dir: Path, task_row_json: str) -> None:
    for name in _RESULT_FILES:
        if (task_dir / name).is_file():
            _copy_synced(task_dir / name, stage / name)
    for extra in sorted(task_dir.glob("confusion_*.png")):
        if not (stage / extra.name).exists():
            _copy_synced(extra, stage / extra.name)
    _write_synced(stage / TASK_ROW_FILE, task_row_json)


def _next_version(model_dir: Path, results_model_dir: Path) -> int:
    # Results count too: a version folder removed from the repository keeps its number taken.
    taken = existing_versions(model_dir) + existing_versions(results_model_dir)
    return max(taken, default=0) + 1


def _place_version(
    stage: Path,
    model_dir: Path,
    results_model_dir: Path,
    files_for: Callable[[int], dict[str, str]],
    model_name: str,
    *,
    before_rename: Callable[[Path, int], None] | None,
) -> int:
    """Replace the model-level files (``files_for(version)``: their configs name the version), then
    rename ``stage`` to that version number; on a lost race put the files back and try the next."""
    for _ in range(MAX_VERSION_ATTEMPTS):
        version = _next_version(model_dir, results_model_dir)
        backups = versions.replace_model_files(model_dir, files_for(version))
        try:
            if before_rename is not None:
                before_rename(stage, version)
            _rename_noreplace(stage, model_dir / str(version))
            return version
        except OSError as exc:
            versions.restore_model_files(backups)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                log.debug("model %s: version %d was taken by another publisher, retrying", model_name, version)
                continue
            raise
        except BaseException:
            versions.restore_model_files(backups)
            raise
    raise PublishError(f"model {model_name}: no free version number after {MAX_VERSION_ATTEMPTS} attempts")


def _rename_into(src: Path, dst: Path, model_name: str) -> None:
    try:
        _rename_noreplace(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        # Left over from an earlier run with this number: keep it, put ours beside it.
        alt = dst.with_name(f"{dst.name}-{uuid.uuid4().hex[:8]}")
        log.warning("model %s: %s already exists; results saved in %s", model_name, dst, alt)
        _rename_noreplace(src, alt)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; raise ``OSError(EEXIST)`` if ``dst`` exists (never replace it)."""
    if _renameat2 is not None:
        result = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if result == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):  # EINVAL: the file system lacks the flag
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    # Plain rename of a directory fails with ENOTEMPTY/EEXIST onto a non-empty directory; an
    # empty target directory cannot be a published version (those always hold model.onnx).
    os.rename(src, dst)
