"""The gRPC client of a Triton server serving PyTrain models.

Example::

    from pytrain.client import TritonClient

    with TritonClient("127.0.0.1:8001") as client:          # waits until the server is ready
        [top] = client.predict("kitchen", ["clip.mp4"], top_k=3)
        top[0].label, top[0].probability                    # ("cooking", 0.7779)

The client builds the model's :class:`~pytrain.spec.TensorSpec` (clip size, dtypes, tensor names,
sampling) from Triton's model metadata, or from a PyTrain ``<model>.config`` when one is given,
checks it against the input and output Triton serves (:func:`check_served_tensors`), decodes each
video with :func:`pytrain.video.decode_views` (the evaluation decode path of training: the model's
sampling mode, ``test_clips`` evenly spaced views), sends the uint8 frames, and asks Triton's
classification extension for every class's probability, so the labels come from the server's
``labels.txt``. A video's views are averaged (:func:`average_views`), as training's evaluation does.

Triton's metadata carries no sampling: without a ``<model>.config`` it is read from the served
model config's ``parameters`` (``pytrain_sampling``, ...; written for every non-uniform model,
:func:`pytrain.publish.triton_config.sampling_parameters`), else from the local model repository's
``<model>/<version>/tensor_spec.json`` when this host has it (``PYTRAIN_MODEL_REPO_DIR``), else
the model is taken as ``uniform`` with one view.

Timeouts are separate: ``ready_timeout_s`` (server start), ``load_timeout_s`` (a model becoming
ready) and ``inference_timeout_s`` (one request).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pytrain.errors import ClientError, PyTrainError, VideoDecodeError
from pytrain.spec import TensorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One class of a clip's top-k: ``label`` and its softmax ``probability`` in ``[0, 1]``."""

    label: str
    probability: float

    def to_dict(self, decimals: int = 4) -> dict[str, Any]:
        """``{"label": "turkey", "probability": 0.7779}``."""
        return {"label": self.label, "probability": round(float(self.probability), decimals)}


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs to know about a served model: its :class:`~pytrain.spec.TensorSpec`.

    The spec comes from a PyTrain ``<model>.config`` (labels included) or from Triton's model
    metadata (which carries no labels: ``spec.class_list`` is then the class indices ``"0"``,
    ``"1"``, ...; the classification extension's answers carry the real labels). Either way it has
    been checked against the input and output Triton actually serves.

    Attributes:
        name: Triton model name.
        version: the version asked for (``""``: the server's choice, the newest).
        spec: the served model's tensors: input ``(N, T, H, W, C)`` of ``spec.input_dtype``,
            output ``(N, num_classes)`` of ``spec.output_dtype``.
        max_batch_size: largest ``N`` one request may carry (0: unknown, send one clip at a time).
    """

    name: str
    version: str
    spec: TensorSpec
    max_batch_size: int = 0

    @property
    def input_name(self) -> str:
        """Name of the input tensor."""
        return self.spec.input_name

    @property
    def output_name(self) -> str:
        """Name of the output tensor."""
        return self.spec.output_name

    @property
    def num_frames(self) -> int:
        """T, frames per clip."""
        return self.spec.num_frames

    @property
    def height(self) -> int:
        """H, frame height in pixels."""
        return self.spec.height

    @property
    def width(self) -> int:
        """W, frame width in pixels."""
        return self.spec.width

    @property
    def num_classes(self) -> int:
        """C, the length of the output's class axis."""
        return self.spec.num_classes

    @property
    def clip_shape(self) -> tuple[int, ...]:
        """``(T, H, W, C)``: one clip as the model takes it (the input shape without the batch axis)."""
        return tuple(self.spec.input_shape[1:])

    @property
    def input_dtype(self) -> np.dtype:
        """The input's numpy dtype (``uint8`` for PyTrain models)."""
        return np.dtype(self.spec.input_dtype)

    @classmethod
    def from_pytrain_config(cls, path: Path, *, name: str | None = None, version: str = "") -> "ModelInfo":
        """Read a PyTrain ``<model>.config`` (INI); ``name`` defaults to the file's stem.

        Raises:
            ClientError: the file is missing or malformed.
        """
        from pytrain.publish.triton_config import read_pytrain_ini

        path = Path(path)
        try:
            data = read_pytrain_ini(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ClientError(f"cannot read model config {path}: {exc}") from exc
        except PyTrainError as exc:
            raise ClientError(f"{path}: {exc.message}", hint=exc.hint) from exc
        spec_fields = {f.name for f in fields(TensorSpec)}
        try:
            spec = TensorSpec(**{k: v for k, v in data.items() if k in spec_fields})
        except PyTrainError as exc:  # e.g. frame_interval with uniform sampling
            raise ClientError(f"{path}: {exc.message}", hint=exc.hint) from exc
        return cls(name=name or path.stem, version=version, spec=spec)


class TritonClient:
    """A Triton gRPC client for PyTrain models; use it as a context manager.

    Args:
        url: ``host:port`` of Triton's gRPC endpoint; default ``PYTRAIN_TRITON_GRPC_URL``, else
            ``127.0.0.1:<PYTRAIN_TRITON_GRPC_PORT>``.
        ready_timeout_s: how long entering waits for the server to be ready, seconds.
        load_timeout_s: how long to wait for a model (version) to become ready, seconds.
        inference_timeout_s: deadline of one inference request, seconds.
        shared_memory: send the frames through a POSIX shared-memory region registered with
            Triton (its system shared-memory extension) instead of inside the gRPC message; much
            faster for batches. ``None`` (default): on when ``url`` is a loopback address; if the
            server cannot map the region (e.g. Triton in a container), the client falls back to
            the gRPC payload. One client is not meant to be shared by threads.

    Raises (on entering):
        ClientError: the server did not answer at ``url`` within ``ready_timeout_s``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        ready_timeout_s: float = 30.0,
        load_timeout_s: float = 120.0,
        inference_timeout_s: float = 60.0,
        shared_memory: bool | None = None,
    ) -> None:
        if url is None:
            from pytrain.settings import get_settings

            settings = get_settings()
            url = settings.triton_grpc_url or f"127.0.0.1:{settings.triton_grpc_port}"
        # gRPC takes host:port; a scheme (http://host:8001, as for Triton's HTTP endpoint) only
        # makes the name lookup fail with an obscure message.
        self.url = re.sub(r"^(grpc|https?)://", "", url.strip()).rstrip("/")
        self.ready_timeout_s = ready_timeout_s
        self.load_timeout_s = load_timeout_s
        self.inference_timeout_s = inference_timeout_s
        self._client: Any = None
        self._info_cache: dict[tuple[str, str], ModelInfo] = {}
        host = self.url.rsplit(":", 1)[0].strip("[]")
        self._use_shm = shared_memory if shared_memory is not None else host in _LOOPBACK
        self._shm: _ShmRegion | None = None
        from pytrain.serving.control import control_headers, inference_headers

        # Model config and repository index sit behind Triton's control key: sent when this host
        # knows it (never created here); without it the client reads metadata only.
        self._control_headers = control_headers(create=False) or None
        self._inference_headers = inference_headers() or None

    # --- connection ---------------------------------------------------------------------
    def __enter__(self) -> "TritonClient":
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the channel and wait until the server is ready (``ready_timeout_s``).

        Raises:
            ClientError: unreachable or not ready in time, naming the address tried.
        """
        import tritonclient.grpc as grpcclient

        if self._client is None:
            try:
                self._client = grpcclient.InferenceServerClient(self.url)
            except Exception as exc:  # a malformed address
                raise ClientError(f"cannot connect to Triton at {self.url!r}: {exc}", hint="pass host:port, e.g. 127.0.0.1:8001") from exc
        deadline = time.monotonic() + self.ready_timeout_s
        last_error = "no answer"
        while True:
            try:
                if self._client.is_server_ready(client_timeout=max(0.5, min(5.0, self.ready_timeout_s))):
                    return
                last_error = "the server answers but is not ready"
            except Exception as exc:
                last_error = _short(exc)
            if time.monotonic() >= deadline:
                self.close()
                raise ClientError(
                    f"Triton server unreachable at {self.url} (waited {self.ready_timeout_s:.0f} s): {last_error}",
                    hint="start one with `pytrain serve`, or pass --url / set PYTRAIN_TRITON_GRPC_URL to its gRPC "
                    "host:port (Triton's default 8001; 8000 is its HTTP port)",
                )
            time.sleep(0.2)

    def close(self) -> None:
        """Release the shared-memory region and close the gRPC channel (entering again reconnects).

        A server that answers slowly is given up to ``inference_timeout_s`` to unregister the region.
        """
        self._release_shm()
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    @property
    def _grpc(self) -> Any:
        if self._client is None:
            self.connect()
        return self._client

    # --- models -------------------------------------------------------------------------
    def wait_model_ready(self, model: str, version: str | int | None = None) -> None:
        """Wait up to ``load_timeout_s`` until ``model`` (``version``, default newest) is ready.

        Raises:
            ClientError: the model is unknown to the server, failed to load, or is not ready in
                time; the message includes Triton's state and reason.
        """
        version_s = "" if version is None else str(version)
        deadline = time.monotonic() + self.load_timeout_s
        while True:
            try:
                if self._grpc.is_model_ready(model, version_s, client_timeout=5.0):
                    return
            except Exception as exc:
                log.debug("is_model_ready(%s): %s", model, exc)
            state = self._repository_state(model, version_s)
            if state is None:
                raise ClientError(
                    f"model {model!r} is not in the model repository of Triton at {self.url}",
                    hint="publish it first (pytrain publish --task-dir DIR), or check the name",
                )
            if time.monotonic() >= deadline:
                what = f"{model!r} version {version_s}" if version_s else repr(model)
                raise ClientError(
                    f"model {what} is not ready on Triton at {self.url} after {self.load_timeout_s:.0f} s ({state})",
                    hint=_not_ready_hint(state),
                )
            time.sleep(0.25)

    def _repository_state(self, model: str, version: str) -> str | None:
        """``"STATE: reason"`` of the model in Triton's repository index, ``None`` if absent."""
        try:
            index = self._grpc.get_model_repository_index(as_json=True, headers=self._control_headers, client_timeout=5.0)
        except Exception as exc:
            return f"repository index unavailable: {_short(exc)}"
        entries = [m for m in index.get("models", []) if m.get("name") == model]
        if not entries:
            return None
        matching = [m for m in entries if not version or m.get("version") == version] or entries
        return "; ".join(
            f"version {m.get('version', '?')} {m.get('state', 'UNKNOWN')}" + (f": {m['reason']}" if m.get("reason") else "")
            for m in matching
        )

    def model_info(self, model: str, version: str | int | None = None, *, config_path: Path | None = None) -> ModelInfo:
        """Clip shape and tensor names of a served model, from Triton's metadata (or ``config_path``).

        Waits for the model to be ready first (see :meth:`wait_model_ready`).

        Raises:
            ClientError: model not ready, or the input and output Triton serves are not those of
                the tensor spec (the PyTrain config's, or PyTrain's ``(-1, T, H, W, 3)`` uint8).
        """
        version_s = "" if version is None else str(version)
        key = (model, version_s)
        if key in self._info_cache:
            return self._info_cache[key]
        self.wait_model_ready(model, version_s)
        try:
            config = self._model_config(model, version_s)
            max_batch = int(config.get("max_batch_size", 0))
            meta = self._grpc.get_model_metadata(model, version_s, as_json=True, client_timeout=10.0)
            if config_path is not None:
                info = replace(ModelInfo.from_pytrain_config(config_path, name=model, version=version_s), max_batch_size=max_batch)
            else:
                info = _with_sampling(_info_from_metadata(model, version_s, meta, max_batch), config)
            check_served_tensors(info, meta)
        except ClientError:
            raise
        except Exception as exc:
            raise ClientError(f"cannot read the metadata of model {model!r} from Triton at {self.url}: {_short(exc)}") from exc
        self._info_cache[key] = info
        return info

    def ready_versions(self, model: str) -> list[int]:
        """The versions of ``model`` Triton has ready (its metadata's ``versions``), ascending;
        an unversioned request goes to the newest.

        Raises:
            ClientError: the model is unknown to Triton or not ready.
        """
        try:
            meta = self._grpc.get_model_metadata(model, "", as_json=True, client_timeout=10.0)
            return sorted(int(v) for v in meta.get("versions", []))
        except Exception as exc:
            raise ClientError(f"cannot read the metadata of model {model!r} from Triton at {self.url}: {_short(exc)}") from exc

    def _model_config(self, model: str, version: str) -> dict[str, Any]:
        """Triton's config of ``model``; ``{}`` when it is behind a control key this client lacks
        (then ``max_batch_size`` is unknown and clips go one per request)."""
        from tritonclient.utils import InferenceServerException

        try:
            return self._grpc.get_model_config(model, version, as_json=True, headers=self._control_headers, client_timeout=10.0)["config"]
        except InferenceServerException as exc:
            if "is restricted" not in str(exc):
                raise
            log.info("Triton at %s keeps model configs behind its control key; sending one clip per request", self.url)
            return {}

    # --- inference ----------------------------------------------------------------------
    def predict_frames(
        self, model: str, frames: np.ndarray, *, version: str | int | None = None, top_k: int = 1
    ) -> list[list[Prediction]]:
        """Classify decoded clips.

        Args:
            model: Triton model name.
            frames: ``(N, T, H, W, 3)`` uint8 RGB, T/H/W as the model expects.
            version: model version; ``None`` lets the server choose (the newest).
            top_k: classes per clip, most probable first.

        Returns:
            ``N`` lists of ``min(top_k, num_classes)`` :class:`Prediction`.

        Raises:
            ClientError: wrong shape or dtype, model not ready, request failed or timed out.
        """
        import tritonclient.grpc as grpcclient

        info = self.model_info(model, version)
        frames = np.asarray(frames)
        expected = info.clip_shape
        if frames.ndim != len(expected) + 1 or frames.shape[1:] != expected or frames.dtype != info.input_dtype:
            raise ClientError(
                f"model {model!r} takes (N, {', '.join(map(str, expected))}) {info.input_dtype} clips, got {frames.shape} {frames.dtype}"
            )
        k = max(1, min(int(top_k), info.num_classes))
        step = info.max_batch_size or 1
        results: list[list[Prediction]] = []
        for start in range(0, frames.shape[0], step):
            chunk = np.ascontiguousarray(frames[start : start + step])
            tensor = self._input_tensor(info, chunk)
            wanted = grpcclient.InferRequestedOutput(info.output_name, class_count=k)
            try:
                response = self._grpc.infer(
                    model, [tensor], model_version=info.version, outputs=[wanted], headers=self._inference_headers,
                    client_timeout=self.inference_timeout_s,
                )
            except Exception as exc:
                raise ClientError(
                    f"inference on model {model!r} at Triton {self.url} failed: {_short(exc)}",
                    hint=f"inference timeout is {self.inference_timeout_s:.0f} s",
                ) from exc
            results.extend(_parse_classification(response.as_numpy(info.output_name)))
        return results

    def infer(self, model: str, frames: np.ndarray, *, version: str | int | None = None) -> np.ndarray:
        """Raw class probabilities of decoded clips (no classification extension).

        Args:
            frames: ``(N, T, H, W, 3)`` uint8, sent as one request (``N <= max_batch_size``).

        Returns:
            ``(N, num_classes)`` float32.

        Raises:
            ClientError: model not ready, request failed or timed out.
        """
        import tritonclient.grpc as grpcclient

        info = self.model_info(model, version)
        frames = np.ascontiguousarray(frames, dtype=info.input_dtype)
        tensor = self._input_tensor(info, frames)
        try:
            response = self._grpc.infer(
                model, [tensor], model_version=info.version, outputs=[grpcclient.InferRequestedOutput(info.output_name)],
                headers=self._inference_headers, client_timeout=self.inference_timeout_s,
            )
        except Exception as exc:
            raise ClientError(f"inference on model {model!r} at Triton {self.url} failed: {_short(exc)}") from exc
        return response.as_numpy(info.output_name)

    def predict(
        self, model: str, videos: Sequence[str | Path], *, version: str | int | None = None, top_k: int = 1,
        clips: int | None = None,
    ) -> list[list[Prediction]]:
        """Decode each video as evaluation does (:meth:`read_views`) and classify it.

        Args:
            clips: views per video whose probabilities are averaged; default the model's
                ``test_clips``.

        Returns:
            One top-k list per video, in order (the views' mean probabilities).

        Raises:
            ClientError: a video cannot be decoded (naming it), or as :meth:`predict_frames`.
        """
        info = self.model_info(model, version)
        views = [self.read_views(v, info, clips=clips) for v in videos]
        return self.classify_views(model, views, version=version, top_k=top_k)

    def classify_views(
        self, model: str, videos: Sequence[np.ndarray], *, version: str | int | None = None, top_k: int = 1
    ) -> list[list[Prediction]]:
        """Classify videos from their views: each video's top ``top_k`` classes by the mean
        probability of its views (:func:`average_views`), as training's evaluation averages them.

        Args:
            videos: per video ``(K, T, H, W, 3)`` uint8 views (:meth:`read_views`; ``K`` may differ
                between videos). All views go to Triton together, in batches.

        Returns:
            One top-k list per video, in order.

        Raises:
            ClientError: as :meth:`predict_frames`.
        """
        info = self.model_info(model, version)
        if not videos:
            return []
        answers = self.predict_frames(model, np.concatenate(list(videos)), version=version, top_k=info.num_classes)
        k = max(1, min(int(top_k), info.num_classes))
        results, start = [], 0
        for views in videos:
            results.append(average_views(answers[start : start + len(views)])[:k])
            start += len(views)
        return results

    # --- shared memory ------------------------------------------------------------------
    def _input_tensor(self, info: ModelInfo, frames: np.ndarray) -> Any:
        """The request's input: in the shared-memory region when possible, else in the message."""
        import tritonclient.grpc as grpcclient

        tensor = grpcclient.InferInput(info.input_name, list(frames.shape), _triton_datatype(info.spec.input_dtype))
        if self._use_shm and frames.nbytes > 0:
            region = self._shm_region(frames.nbytes)
            if region is not None:
                import tritonclient.utils.shared_memory as shm

                shm.set_shared_memory_region(region.handle, [frames])
                tensor.set_shared_memory(region.name, frames.nbytes)
                return tensor
        tensor.set_data_from_numpy(frames)
        return tensor

    def _shm_region(self, byte_size: int) -> "_ShmRegion | None":
        if self._shm is not None and self._shm.byte_size >= byte_size:
            return self._shm
        self._release_shm()
        import os
        import uuid

        import tritonclient.utils.shared_memory as shm

        name = f"pytrain_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        size = max(byte_size, 1 << 20)
        handle = None
        try:
            handle = shm.create_shared_memory_region(name, f"/{name}", size)
            self._grpc.register_system_shared_memory(name, f"/{name}", size, client_timeout=self.inference_timeout_s)
        except Exception as exc:  # no /dev/shm here, or the server cannot map it (another host/container)
            log.info("shared memory with Triton at %s unavailable (%s); sending frames in the gRPC message", self.url, _short(exc))
            if handle is not None:
                if _status(exc) == _TIMED_OUT:  # a late answer: the server may have registered it after all
                    self._unregister(name)
                shm.destroy_shared_memory_region(handle)
            self._use_shm = False
            return None
        self._shm = _ShmRegion(name, handle, size)
        return self._shm

    def _release_shm(self) -> None:
        region, self._shm = self._shm, None
        if region is None:
            return
        import tritonclient.utils.shared_memory as shm

        if self._client is not None:
            self._unregister(region.name)
        try:
            shm.destroy_shared_memory_region(region.handle)
        except Exception as exc:
            log.debug("destroy %s: %s", region.name, exc)

    def _unregister(self, name: str) -> bool:
        """Unregister shared-memory region ``name`` from the server; ``True`` when it is gone.

        A busy server (a loaded host) may answer after a request's deadline: the call is repeated
        while it times out, for up to ``inference_timeout_s`` in all, so that the region does not stay
        registered (and mapped) in Triton for the rest of its life. A server that cannot be reached
        has dropped the region with its process; other errors are logged. Unregistering a name the
        server does not know succeeds, so a repeat after a late success is harmless.
        """
        deadline = time.monotonic() + self.inference_timeout_s
        while True:
            try:
                self._client.unregister_system_shared_memory(name, client_timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                return True
            except Exception as exc:
                status = _status(exc)
                if status == _TIMED_OUT and time.monotonic() < deadline:
                    log.debug("unregister %s timed out; retrying", name)
                    continue
                level = logging.DEBUG if status == _UNREACHABLE else logging.WARNING  # gone: its regions went with it
                log.log(level, "shared-memory region %s may stay registered on Triton at %s: %s", name, self.url, _short(exc))
                return False

    @staticmethod
    def read_views(path: str | Path, info: ModelInfo, *, clips: int | None = None) -> np.ndarray:
        """``(K, T, H, W, 3)`` uint8: the ``K`` evenly spaced views of ``path`` that training's
        evaluation takes (:func:`pytrain.video.decode_views` with the model's sampling).

        Args:
            clips: ``K``; default the model's ``test_clips``.

        Raises:
            ClientError: the video cannot be decoded (wraps :class:`VideoDecodeError`), or ``clips``
                is out of range.
        """
        from pytrain.video import decode_views

        sampling = info.spec.clip_sampling
        try:
            if clips is not None:
                sampling = replace(sampling, test_clips=int(clips))
            return decode_views(path, info.num_frames, info.height, info.width, sampling)
        except VideoDecodeError as exc:
            raise ClientError(exc.message, hint="pass an mp4 (H.264) file FFmpeg can decode") from exc
        except PyTrainError as exc:
            raise ClientError(exc.message, hint=exc.hint) from exc


_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: gRPC status codes as tritonclient's InferenceServerException.status() spells them.
_TIMED_OUT, _UNREACHABLE = "StatusCode.DEADLINE_EXCEEDED", "StatusCode.UNAVAILABLE"


def average_views(answers: Sequence[Sequence[Prediction]]) -> list[Prediction]:
    """One video's prediction from its views' answers (each listing every class): the mean
    probability per label, most probable first (ties: label order).

    Raises:
        ClientError: no answers, or answers that do not list the same labels.
    """
    if not answers:
        raise ClientError("no views to average")
    labels = sorted(p.label for p in answers[0])
    table = []
    for answer in answers:
        by_label = {p.label: p.probability for p in answer}
        if sorted(by_label) != labels:
            raise ClientError(f"the views' answers list different classes: {labels} and {sorted(by_label)}")
        table.append([by_label[label] for label in labels])
    mean = np.mean(np.asarray(table, dtype=np.float64), axis=0)
    return [Prediction(labels[i], float(mean[i])) for i in np.argsort(-mean, kind="stable")]


def repository_spec(model: str, version: str = "") -> TensorSpec | None:
    """``PYTRAIN_MODEL_REPO_DIR/<model>/<version or newest>/tensor_spec.json`` when this host has
    the model repository, else ``None`` (never raises)."""
    from pytrain.settings import get_settings

    try:
        folder = Path(get_settings().model_repo_dir) / model
        versions = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
        chosen = version or (str(max(versions)) if versions else "")
        return TensorSpec.load(folder / chosen) if chosen else None
    except (PyTrainError, OSError, ValueError):
        return None


def _with_sampling(info: ModelInfo, config: dict[str, Any]) -> ModelInfo:
    """``info`` (from Triton's metadata, which has no sampling) with the model's clip sampling and
    ``clip_seconds``.

    The sampling comes from the served model config's ``parameters``
    (:func:`pytrain.publish.triton_config.sampling_from_parameters`), else, without them (a uniform
    model, an older config, a config behind the control key), from the local repository's spec of
    the model (:func:`repository_spec`) when it has the same tensors; else ``info`` stays uniform
    with one view. ``clip_seconds`` comes from that local spec (``None`` without one).
    """
    from pytrain.publish.triton_config import sampling_from_parameters

    served = sampling_from_parameters(config)
    local = repository_spec(info.name, info.version)
    if local is not None and (local.input_shape != info.spec.input_shape or local.num_classes != info.num_classes):
        local = None  # another model's spec
    if served:
        return replace(info, spec=replace(info.spec, **served, clip_seconds=None if local is None else local.clip_seconds))
    if local is None:
        log.info("model %s: no local tensor_spec.json for the served tensors; sampling as uniform with one view "
                 "(pass the model's PyTrain config for a model trained otherwise)", info.name)
        return info
    spec = replace(info.spec, sampling=local.sampling, frame_interval=local.frame_interval, test_clips=local.test_clips,
                   clip_seconds=local.clip_seconds)
    return replace(info, spec=spec)


def _not_ready_hint(state: str) -> str:
    """The fix for a model Triton lists but does not serve, from its ``"version V STATE: reason"`` text."""
    if "READY" not in state and ("UNKNOWN" in state or "unloaded" in state):
        # Listed but never loaded: a server in explicit model-control mode (`pytrain serve`'s default)
        # loads a model published after its start only when publishing asks it to.
        return (
            "Triton has not loaded it: if it was published after the server started, set PYTRAIN_TRITON_GRPC_URL=<its "
            "host:port> for `pytrain orchestrate` / `pytrain publish` so publishing loads new models, or restart "
            "`pytrain serve`; else see the server log for why it failed to load"
        )
    return "see the server log; a version its config.pbtxt's version_policy does not list is not served (pytrain models)"


@dataclass
class _ShmRegion:
    name: str
    handle: Any
    byte_size: int


def _triton_datatype(numpy_dtype: str) -> str:
    """The datatype name Triton's metadata and requests use (``"uint8"`` -> ``"UINT8"``)."""
    from pytrain.publish.triton_config import triton_dtype

    return triton_dtype(numpy_dtype).removeprefix("TYPE_")


def _metadata_tensors(model: str, meta: dict[str, Any]) -> tuple[dict[str, Any], list[int], dict[str, Any], list[int]]:
    """``(input, input shape, output, output shape)`` of Triton's metadata of a one-in, one-out model."""
    try:
        (inp,), (out,) = meta["inputs"], meta["outputs"]
        return inp, [int(d) for d in inp["shape"]], out, [int(d) for d in out["shape"]]
    except (KeyError, ValueError, TypeError) as exc:
        raise ClientError(f"model {model!r}: expected one input and one output in its metadata, got {meta}") from exc


def _info_from_metadata(model: str, version: str, meta: dict[str, Any], max_batch: int) -> ModelInfo:
    """A :class:`ModelInfo` whose spec takes T, H, W, the names and the class count from Triton's
    metadata; dtypes and channels are PyTrain's (:class:`TensorSpec`'s defaults), and
    :func:`check_served_tensors` then checks them against the metadata."""
    inp, shape, out, out_shape = _metadata_tensors(model, meta)
    if len(shape) != 5 or min(shape[1:]) < 1 or len(out_shape) != 2 or out_shape[-1] < 1:
        raise ClientError(
            f"model {model!r}: input {inp.get('name')} is {inp.get('datatype')} {shape}, not a PyTrain clip "
            f"(-1, T, H, W, C) with one class axis out (output {out.get('name')} {out_shape})"
        )
    spec = TensorSpec(
        class_list=[str(i) for i in range(out_shape[-1])],  # metadata has no labels (see ModelInfo)
        num_frames=shape[1], height=shape[2], width=shape[3], input_name=inp["name"], output_name=out["name"],
    )
    return ModelInfo(name=model, version=version, spec=spec, max_batch_size=max_batch)


def check_served_tensors(info: ModelInfo, meta: dict[str, Any]) -> None:
    """Check that Triton serves the input and output ``info.spec`` describes.

    Args:
        info: the model as the client will use it.
        meta: Triton's model metadata (``get_model_metadata(..., as_json=True)``).

    Raises:
        ClientError: a name, datatype or shape differs (e.g. a PyTrain config of another version
            than the one served, or a model that is not a PyTrain clip classifier); the message
            shows both.
    """
    inp, shape, out, out_shape = _metadata_tensors(info.name, meta)
    spec = info.spec
    served = (inp.get("name"), inp.get("datatype"), shape, out.get("name"), out.get("datatype"), out_shape)
    expected = (spec.input_name, _triton_datatype(spec.input_dtype), spec.input_shape, spec.output_name,
                _triton_datatype(spec.output_dtype), spec.output_shape)
    if served != expected:
        describe = "input {} {} {} -> output {} {} {}".format
        raise ClientError(
            f"model {info.name!r} version {info.version or 'latest'}: Triton serves {describe(*served)}, "
            f"but its tensor spec says {describe(*expected)}",
            hint="pass the PyTrain config of the version Triton serves, or no config (the metadata is used)",
        )


def _parse_classification(array: np.ndarray) -> list[list[Prediction]]:
    """Triton's classification output ``(N, k)`` of ``b"score:index[:label]"`` -> predictions."""
    results = []
    for row in np.atleast_2d(array):
        predictions = []
        for item in row:
            text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            score, index, *label = text.split(":", 2)
            predictions.append(Prediction(label=label[0] if label else index, probability=float(score)))
        results.append(predictions)
    return results


def _status(exc: BaseException) -> str | None:
    """The gRPC status of a tritonclient error (``"StatusCode.DEADLINE_EXCEEDED"``), ``None`` for others."""
    status = getattr(exc, "status", None)
    return status() if callable(status) else None


def _short(exc: BaseException) -> str:
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    lines = str(text).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
