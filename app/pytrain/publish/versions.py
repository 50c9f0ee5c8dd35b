"""Which versions of a model Triton serves, and changing that: publishing, rollback, unpublishing.

A model's ``config.pbtxt`` (and ``configs/cpu.pbtxt``), ``labels.txt`` and ``<model>.config`` are
per model, but every version may have been trained with other classes or another clip size. So:

- each version folder keeps its own ``labels.txt``, ``tensor_spec.json`` and ``<model>.config``
  (written with the model, in the same atomic rename);
- the model-level files are always those of one version, the *anchor* (the newest published, or
  the one rolled back to), and the configs' ``version_policy { specific { versions: [...] } }``
  list only the anchor and the newest older versions *compatible* with it (same class list, same
  tensors and clip size; :func:`compatible`), at most ``PYTRAIN_SERVED_VERSIONS``
  (:func:`choose_served`). Triton therefore never serves a version with labels or a clip size that
  are not its own; the others stay on disk, unserved, for ``pytrain rollback``.

Every change of the served set is recorded as one :class:`HistoryRecord` line in
``model_repo/<model>/history.jsonl`` (JSON lines, appended with one ``write`` under the model's
lock; Triton ignores files that are not version folders). Changes of one model are serialised by
:func:`model_lock` (``flock`` on the model folder), across threads and processes.

Rollback and unpublish rewrite the model-level files atomically (each with ``os.replace``), then ask
a running Triton in explicit model-control mode to reload the model (:mod:`pytrain.publish.loader`).
Triton keeps serving the loaded versions while it loads the new set, and when the load fails the
old set stays loaded (Triton's model-management contract; its L0_lifecycle tests): PyTrain then
puts the previous files back, so the repository keeps describing what is served, and raises.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from pytrain import spec as task_files
from pytrain.errors import ConfigurationError, PublishError
from pytrain.publish import triton_config
from pytrain.settings import Settings
from pytrain.spec import TensorSpec, write_text_atomic

log = logging.getLogger(__name__)

HISTORY_FILE = "history.jsonl"
GPU_CONFIG_FILE = "config.pbtxt"
CPU_CONFIG_FILE = f"configs/{triton_config.CPU_CONFIG_NAME}.pbtxt"
# The refusal text request_load returns for a Triton in poll/none mode: then the files are the change.
_NOT_EXPLICIT = "not in explicit model-control mode"


def ini_file(model_name: str) -> str:
    """The PyTrain INI config's file name, ``<model>.config`` (model folder and version folders)."""
    return f"{model_name}.config"


# --- the record ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryRecord:
    """One line of ``history.jsonl``: a change of what a model serves.

    Attributes:
        event: ``publish``, ``rollback`` or ``unpublish``.
        time: Unix seconds.
        user: who did it (the OS user name).
        version: the version published, rolled back to, or removed.
        served: versions the configs serve afterwards, ascending.
        previous: versions they served before, ascending (``[]`` for a model's first version).
        task_id: the task that trained ``version`` (publish only), else ``None``.
        message: why the served set is what it is (e.g. a class change), or ``""``.
        run_id: the run of the task (``task_runs.id``) that published it (publish only), else
            ``None``; a retry of that run finds its version here (:func:`published_by_run`).
        task_uid: the task row's ``uid`` (publish only), else ``None``. Task and run ids start
            again at 1 in a new database; the uid does not, so ``(task_uid, run_id)`` names one run
            of one database, also in a model repository that outlived its database.
    """

    event: str
    time: float
    user: str
    version: int
    served: list[int]
    previous: list[int]
    task_id: int | None = None
    message: str = ""
    run_id: int | None = None
    task_uid: str | None = None

    def to_json(self) -> str:
        """One JSON object, no newline."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "HistoryRecord":
        """Parse one line. Raises ``ValueError`` (``json.JSONDecodeError``, ``TypeError`` wrapped) on a bad line."""
        data = json.loads(line)
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"not a history record: {line.strip()[:200]}") from exc


def read_history(model_dir: Path) -> list[HistoryRecord]:
    """The model's records, oldest first; unreadable lines are skipped (and logged)."""
    try:
        lines = (Path(model_dir) / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        if line.strip():
            try:
                records.append(HistoryRecord.from_json(line))
            except ValueError as exc:
                log.warning("%s: skipping a line: %s", Path(model_dir) / HISTORY_FILE, exc)
    return records


def published_by_run(model_dir: Path, task_uid: Any, run_id: Any) -> HistoryRecord | None:
    """The ``publish`` record of run ``run_id`` of the task with uid ``task_uid`` whose version
    folder is still there, or ``None`` (also when either is ``None``). Call it under :func:`model_lock`."""
    if task_uid is None or run_id is None:
        return None
    for record in reversed(read_history(model_dir)):
        if record.event == "publish" and record.task_uid == str(task_uid) and record.run_id == run_id \
                and (Path(model_dir) / str(record.version)).is_dir():
            return record
    return None


def append_history(model_dir: Path, record: HistoryRecord) -> None:
    """Append ``record`` as one line with a single ``write`` on an ``O_APPEND`` descriptor, then fsync.

    Call it under :func:`model_lock`; a reader never sees half a line from another writer.
    """
    data = (record.to_json() + "\n").encode()
    fd = os.open(Path(model_dir) / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def current_user() -> str:
    """The OS user name (for the history), or the numeric uid when there is none."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


@contextmanager
def model_lock(model_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the model folder (created if missing) while changing what it serves."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- the policy ------------------------------------------------------------------------------
def compatible(a: TensorSpec, b: TensorSpec) -> bool:
    """True when one config and one ``labels.txt`` describe both: same classes in the same order,
    same input/output names, dtypes and shapes (so the same clip size), and the same clip sampling
    (the config's ``parameters`` carry it for clients: :func:`pytrain.publish.triton_config.sampling_parameters`)."""
    return (
        list(a.class_list) == list(b.class_list)
        and a.clip_sampling == b.clip_sampling
        and (a.input_name, a.output_name, a.input_dtype, a.output_dtype) == (b.input_name, b.output_name, b.input_dtype, b.output_dtype)
        and list(a.input_shape) == list(b.input_shape)
        and list(a.output_shape) == list(b.output_shape)
    )


def choose_served(specs: dict[int, TensorSpec], anchor: int, limit: int) -> list[int]:
    """The versions a config anchored at ``anchor`` serves: ``anchor`` and the newest older versions
    compatible with it, ``limit`` at most, ascending. Newer versions are never served with an older
    anchor (Triton would route unversioned requests to them).

    Args:
        specs: ``{version: its tensor spec}`` of the versions on disk (``anchor`` included).
        anchor: the version whose files become the model's.
        limit: ``PYTRAIN_SERVED_VERSIONS`` (>= 1).
    """
    chosen = [anchor]
    for version in sorted((v for v in specs if v < anchor), reverse=True):
        if len(chosen) >= limit:
            break
        if compatible(specs[version], specs[anchor]):
            chosen.append(version)
    return sorted(chosen)


def version_spec(model_dir: Path, version: int) -> TensorSpec:
    """``<model_dir>/<version>/tensor_spec.json``.

    Raises:
        PublishError: the version does not exist or has no readable spec.
    """
    folder = Path(model_dir) / str(version)
    if not folder.is_dir():
        raise PublishError(
            f"model {Path(model_dir).name} has no version {version} in {model_dir}",
            hint=f"existing versions: {existing_versions(model_dir)} (pytrain models)",
        )
    try:
        return TensorSpec.load(folder)
    except ConfigurationError as exc:
        raise PublishError(f"model {Path(model_dir).name} version {version}: {exc.message}", hint=exc.hint) from exc


def existing_versions(model_dir: Path) -> list[int]:
    """Integer version folders of a model folder, ascending (``[]`` when it does not exist)."""
    try:
        names = os.listdir(model_dir)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and (Path(model_dir) / n).is_dir())


def all_specs(model_dir: Path) -> dict[int, TensorSpec]:
    """``{version: spec}`` of every version folder with a readable spec (others are logged and left out)."""
    specs = {}
    for version in existing_versions(model_dir):
        try:
            specs[version] = version_spec(model_dir, version)
        except PublishError as exc:
            log.warning("%s", exc)
    return specs


def served_by_config(model_dir: Path) -> list[int]:
    """The versions ``config.pbtxt``'s ``version_policy`` serves among those on disk, ascending
    (``[]`` without a config). ``latest``/``all`` policies (older PyTrain) are resolved against the folders."""
    path = Path(model_dir) / GPU_CONFIG_FILE
    if not path.is_file():
        return []
    policy = triton_config.parse_pbtxt(path.read_text(encoding="utf-8")).version_policy
    on_disk = existing_versions(model_dir)
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        return sorted(v for v in policy.specific.versions if v in on_disk)
    if kind == "all":
        return on_disk
    count = policy.latest.num_versions if kind == "latest" else 1
    return on_disk[-count:] if on_disk else []


def model_files(
    model_name: str, spec: TensorSpec, ini_text: str, served: list[int], settings: Settings
) -> dict[str, str]:
    """The model-level files for an anchor version with ``spec`` serving ``served``:
    ``{relative path: text}``, validated (Triton's ``ModelConfig``). Raises :class:`PublishError`."""
    return {
        triton_config.LABELS_FILE: triton_config.labels_text(spec),
        ini_file(model_name): ini_text,
        CPU_CONFIG_FILE: triton_config.cpu_config_pbtxt(model_name, spec, max_batch_size=settings.max_batch_size, versions=served),
        # Last: a polling Triton reloads on a config change, by then labels and INI are in place.
        GPU_CONFIG_FILE: triton_config.gpu_config_pbtxt(
            model_name, spec, max_batch_size=settings.max_batch_size, accelerator=settings.triton_accelerator,
            repository=settings.triton_model_repository, versions=served,
        ),
    }


def replace_model_files(model_dir: Path, files: dict[str, str]) -> dict[Path, bytes | None]:
    """Write each file atomically (``os.replace``), in order; returns the previous contents (``None``:
    absent) for :func:`restore_model_files`."""
    backups: dict[Path, bytes | None] = {}
    for relative, text in files.items():
        path = Path(model_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        backups[path] = path.read_bytes() if path.is_file() else None
        write_text_atomic(path, text)
    return backups


def restore_model_files(backups: dict[Path, bytes | None]) -> None:
    """Put back what :func:`replace_model_files` replaced (best effort; failures are logged)."""
    for path, content in backups.items():
        try:
            if content is None:
                path.unlink(missing_ok=True)
            else:
                tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}"
                tmp.write_bytes(content)
                os.replace(tmp, path)
        except OSError:  # the original error is the one to report
            log.exception("could not restore %s", path)


def _version_ini(model_dir: Path, version: int) -> str:
    """The version's own ``<model>.config``.

    Raises:
        PublishError: a version published before versions kept their own INI.
    """
    path = Path(model_dir) / str(version) / ini_file(Path(model_dir).name)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PublishError(
            f"model {Path(model_dir).name} version {version} has no {path.name} of its own (published by an older PyTrain)",
            hint="republish its task folder (pytrain publish --task-dir DIR) to get a self-describing version",
        ) from exc


# --- changing what is served -----------------------------------------------------------------
@dataclass(frozen=True)
class ServingChange:
    """The outcome of :func:`rollback` / :func:`unpublish`.

    Attributes:
        model: the model name.
        version: the version rolled back to / removed.
        served: versions served now, ascending.
        previous: versions served before, ascending.
        reloaded: ``True`` when Triton reloaded the model, ``None`` when no Triton URL was given or
            Triton polls the repository (``message`` says which).
        message: what happened, one line.
    """

    model: str
    version: int
    served: list[int]
    previous: list[int]
    reloaded: bool | None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _apply(
    model_dir: Path, files: dict[str, str], url: str | None, *, what: str, settings: Settings
) -> tuple[dict[Path, bytes | None], bool | None, str]:
    """Replace the model files, then have Triton at ``url`` reload; on a refused reload put the old
    files back and raise (Triton keeps what it served). Returns ``(backups, reloaded, message)``."""
    model_name = Path(model_dir).name
    backups = replace_model_files(model_dir, files)
    if not url:
        return backups, None, "no Triton URL given: a running Triton picks the change up on its next load"
    from pytrain.publish.loader import request_load

    loaded, message = request_load(url, model_name, settings=settings)
    if loaded:
        return backups, True, f"Triton at {url} reloaded {model_name}"
    if _NOT_EXPLICIT in message:
        return backups, None, message
    restore_model_files(backups)
    message = " ".join(message.replace(";\n", " ").split()).rstrip(";")  # Triton's text spans lines
    raise PublishError(
        f"model {model_name}: {what} was not applied: {message}; the previous config keeps serving and its files were put back",
        hint="see the Triton log for why the load failed; `pytrain models` shows what is served",
    )


def rollback(model_name: str, version: int | None = None, *, settings: Settings, url: str | None = None) -> ServingChange:
    """Serve ``version`` of ``model_name`` (with the older versions compatible with it) from its own files.

    Args:
        model_name: the model (its folder in ``PYTRAIN_MODEL_REPO_DIR``).
        version: the version to serve; default: the newest version older than the served anchor that
            is compatible with it, else the newest older one.
        settings: ``model_repo_dir``, ``served_versions``, ``max_batch_size`` and the accelerator settings.
        url: a Triton gRPC ``host:port`` in explicit model-control mode to reload the model on.

    Returns:
        The :class:`ServingChange`.

    Raises:
        PublishError: no such model or version, no older version, a version without its own
            files, or Triton refused the new config (then nothing changed on disk or in Triton).
    """
    model_dir = settings.model_repo_dir / model_name
    if not model_dir.is_dir():
        raise PublishError(f"no model {model_name!r} in {settings.model_repo_dir}", hint="pytrain models lists the published models")
    with model_lock(model_dir):
        specs = all_specs(model_dir)
        previous = served_by_config(model_dir)
        if version is None:
            version = _default_rollback_target(model_name, specs, previous)
        spec = version_spec(model_dir, version)
        served = choose_served(specs, version, settings.served_versions)
        files = model_files(model_name, spec, _version_ini(model_dir, version), served, settings)
        _, reloaded, message = _apply(model_dir, files, url, what=f"rollback to version {version}", settings=settings)
        append_history(model_dir, HistoryRecord("rollback", time.time(), current_user(), version, served, previous, message=message))
    log.info("model %s: rolled back to version %d, serving %s (was %s); %s", model_name, version, served, previous, message)
    _follow_registry(settings, model_name, served)
    return ServingChange(model_name, version, served, previous, reloaded, message)


def _follow_registry(settings: Settings, model_name: str, served: list[int]) -> None:
    """Move the MLflow registry's alias ``served`` with Triton (a side channel that never raises;
    :func:`pytrain.tracking.registry.follow_serving`)."""
    from pytrain.tracking.registry import follow_serving

    follow_serving(settings, model_name, served)


def _default_rollback_target(model_name: str, specs: dict[int, TensorSpec], previous: list[int]) -> int:
    if not previous:
        raise PublishError(f"model {model_name}: no served version to roll back from", hint="name the version: pytrain rollback MODEL VERSION")
    anchor = max(previous)
    older = sorted((v for v in specs if v < anchor), reverse=True)
    if not older:
        raise PublishError(f"model {model_name}: version {anchor} is the oldest version; nothing to roll back to")
    same = [v for v in older if anchor in specs and compatible(specs[v], specs[anchor])]
    return (same or older)[0]


def unpublish(model_name: str, version: int, *, settings: Settings, url: str | None = None) -> ServingChange:
    """Remove ``version`` from the repository (its ``results/`` stay, so its number is never reused).

    A served version is first dropped from the served set (the config is rewritten and Triton
    reloaded, as :func:`rollback` does); the folder is then moved out of the repository in one
    rename and deleted.

    Raises:
        PublishError: no such version, it is the only served version, or Triton refused the new config.
    """
    model_dir = settings.model_repo_dir / model_name
    with model_lock(model_dir):
        version_spec(model_dir, version)  # exists?
        previous = served_by_config(model_dir)
        served, message, reloaded = previous, "", None
        if version in previous:
            remaining = [v for v in previous if v != version]
            if not remaining:
                raise PublishError(
                    f"model {model_name}: version {version} is the only served version; unpublishing it would leave nothing served",
                    hint=f"roll back to another version first: pytrain rollback {model_name} VERSION",
                )
            specs = {v: s for v, s in all_specs(model_dir).items() if v != version}
            anchor = max(remaining)
            served = choose_served(specs, anchor, settings.served_versions)
            files = model_files(model_name, specs[anchor], _version_ini(model_dir, anchor), served, settings)
            _, reloaded, message = _apply(model_dir, files, url, what=f"unpublishing version {version}", settings=settings)
        trash = model_dir.parent / f".{model_name}.removed-{version}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(model_dir / str(version), trash)
        except OSError as exc:
            raise PublishError(f"model {model_name}: cannot remove version {version}: {exc}") from exc
        shutil.rmtree(trash, ignore_errors=True)
        append_history(model_dir, HistoryRecord("unpublish", time.time(), current_user(), version, served, previous, message=message))
    log.info("model %s: version %d unpublished; serving %s", model_name, version, served)
    _follow_registry(settings, model_name, served)
    return ServingChange(model_name, version, served, previous, reloaded, message)


# --- listing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionRow:
    """One line of ``pytrain models``.

    Attributes:
        model, version: which.
        created: Unix seconds it was published (history, else the folder's mtime).
        task_id: the task that trained it (history, else ``results/<model>/<v>/task_row.json``), or ``None``.
        classes: its class list.
        clip: ``"TxHxW"`` frames x pixels.
        test_accuracy: from ``results/<model>/<v>/metrics.json`` (0..1), or ``None``.
        served: listed in ``config.pbtxt``'s version policy.
        state: Triton's state (``READY``, ``UNAVAILABLE``, ...) with its reason, when asked; ``None`` otherwise.
    """

    model: str
    version: int
    created: float
    task_id: int | None
    classes: list[str]
    clip: str
    test_accuracy: float | None
    served: bool
    state: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_versions(settings: Settings, model: str | None = None) -> list[VersionRow]:
    """Every version of every model in ``PYTRAIN_MODEL_REPO_DIR`` (or of ``model``), by model then version."""
    repo = settings.model_repo_dir
    names = [model] if model else sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")) if repo.is_dir() else []
    rows = []
    for name in names:
        model_dir = repo / name
        served = set(served_by_config(model_dir))
        published = {r.version: r for r in read_history(model_dir) if r.event == "publish"}
        for version, spec in all_specs(model_dir).items():
            results = settings.results_dir / name / str(version)
            record = published.get(version)
            task = _read_or_none(task_files.read_published_task_row, results) or task_files.PublishedTaskRow()
            metrics = _read_or_none(task_files.read_metrics, results) or task_files.MetricsRecord()
            rows.append(VersionRow(
                model=name, version=version,
                created=record.time if record else (model_dir / str(version)).stat().st_mtime,
                task_id=(record.task_id if record and record.task_id is not None else task.id),
                classes=list(spec.class_list), clip=f"{spec.num_frames}x{spec.height}x{spec.width}",
                test_accuracy=metrics.test_accuracy, served=version in served,
            ))
    return rows


def list_versions_live(settings: Settings, model: str | None = None, url: str | None = None) -> tuple[list[VersionRow], bool]:
    """:func:`list_versions` with Triton's state of each version (``state``; ``"not loaded"`` for a
    version Triton does not list), as ``pytrain models`` and the console show them.

    Args:
        url: Triton's gRPC ``host:port``; ``None``: a ``pytrain serve`` on ``127.0.0.1:triton_grpc_port``
            is asked if one answers within a second (none answering is no error).

    Returns:
        ``(rows, whether Triton answered)``.

    Raises:
        PublishError: Triton at an explicit ``url`` cannot be reached.
    """
    rows = list_versions(settings, model)
    try:
        states = live_states(url or f"127.0.0.1:{settings.triton_grpc_port}", settings=settings, timeout_s=5.0 if url else 1.0)
    except PublishError:
        if url:  # asked for: say so; a local `pytrain serve` that is not running is no error
            raise
        return rows, False
    return [replace(r, state=states.get((r.model, r.version), "not loaded")) for r in rows], True


def _read_or_none(read: Callable[[Path], Any], folder: Path) -> Any:
    """``read(folder)``, or ``None`` when its file is unreadable or invalid: a listing shows what it can."""
    try:
        return read(folder)
    except (OSError, ConfigurationError) as exc:
        log.warning("%s: %s", folder, exc)
        return None


def live_states(url: str, *, settings: Settings | None = None, timeout_s: float = 5.0) -> dict[tuple[str, int], str]:
    """``{(model, version): "STATE"|"STATE: reason"}`` from Triton's repository index at ``url``
    (a control API: sent with the control key of ``settings``).

    Raises:
        PublishError: Triton cannot be reached at ``url``.
    """
    import tritonclient.grpc as grpcclient

    from pytrain.serving.control import control_headers

    try:
        headers = control_headers(settings, create=False)
        with grpcclient.InferenceServerClient(url) as client:
            index = client.get_model_repository_index(headers=headers, as_json=True, client_timeout=timeout_s)
    except Exception as exc:
        raise PublishError(f"cannot read the model repository index of Triton at {url}: {exc}",
                           hint="is it running? pass --url host:port of its gRPC endpoint") from exc
    states = {}
    for entry in index.get("models", []):
        if str(entry.get("version", "")).isdigit():
            state = entry.get("state", "UNKNOWN") + (f": {entry['reason']}" if entry.get("reason") else "")
            states[(entry["name"], int(entry["version"]))] = state
    return states


__all__ = [
    "HISTORY_FILE", "HistoryRecord", "ServingChange", "VersionRow", "append_history", "choose_served", "compatible",
    "existing_versions", "list_versions", "list_versions_live", "live_states", "model_files", "model_lock", "read_history", "rollback",
    "served_by_config", "unpublish",
]
