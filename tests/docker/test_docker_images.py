"""The training image: content-hash tag, SDK build on the local base image, NGC key hygiene."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from pytrain.errors import CredentialsError, RunnerError
from pytrain.runners import images
from pytrain.settings import Settings


def _context_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("wheelhouse"))
    return dst


def test_image_tag_is_stable_and_follows_every_input(docker_context, tmp_path):
    root = _context_copy(docker_context, tmp_path / "ctx")
    base = "nvcr.io/nvidia/pytorch:24.10-py3"
    first = images.build_inputs(base, context_dir=root)
    assert first.tag == images.build_inputs(base, context_dir=root).tag
    assert first.tag.startswith("pytrain-train:") and len(first.tag.split(":")[1]) == 16
    assert images.TRAIN_DOCKERFILE in first.files and "app/pytrain/runners/docker.py" in first.files

    # caches do not count
    (root / "app/pytrain/__pycache__").mkdir(exist_ok=True)
    (root / "app/pytrain/__pycache__/x.cpython-311.pyc").write_bytes(b"junk")
    assert images.build_inputs(base, context_dir=root).tag == first.tag

    tags = {first.tag}
    source = root / "app/pytrain/spec.py"
    source.write_text(source.read_text() + "\n# changed\n")
    tags.add(images.build_inputs(base, context_dir=root).tag)
    requirements = root / images.TRAIN_REQUIREMENTS
    requirements.write_text(requirements.read_text() + "\n# changed\n")
    tags.add(images.build_inputs(base, context_dir=root).tag)
    dockerfile = root / images.TRAIN_DOCKERFILE
    dockerfile.write_text(dockerfile.read_text() + "\n# changed\n")
    tags.add(images.build_inputs(base, context_dir=root).tag)
    (root / images.WHEELHOUSE).mkdir()
    (root / images.WHEELHOUSE / "extra-1.0-py3-none-any.whl").write_bytes(b"wheel")
    tags.add(images.build_inputs(base, context_dir=root).tag)
    tags.add(images.build_inputs("nvcr.io/nvidia/pytorch:24.12-py3", context_dir=root).tag)
    tags.add(images.build_inputs(base, context_dir=root, uid=1001).tag)
    assert len(tags) == 7, tags


def test_build_inputs_reject_missing_files_and_bad_base(tmp_path):
    from pytrain.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="missing"):
        images.build_inputs("x:1", context_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="invalid base image"):
        images.build_inputs("bad image", context_dir=tmp_path)


@pytest.mark.docker
def test_build_through_sdk_on_local_base_image(docker_client, train_image, docker_base_image, docker_context):
    """The session's image: labelled with its hash, base torch kept, PyTrain and decord importable,
    non-root; asking again finds it without building."""
    image = docker_client.images.get(train_image.tag)
    inputs = images.build_inputs(docker_base_image, context_dir=docker_context)
    assert image.labels[images.LABEL_CONTENT_HASH] == inputs.content_hash
    assert image.labels[images.LABEL_BASE_IMAGE] == docker_base_image
    assert image.attrs["Config"]["Entrypoint"] == ["python", "-m", "pytrain.training"]
    assert image.attrs["Config"]["User"] == "1000:1000"
    out = docker_client.containers.run(
        train_image.tag, entrypoint=["python", "-c",
        "import torch, decord, onnxruntime, onnx, matplotlib, pydantic_settings, pytrain.training.train as t; print(torch.__version__)"],
        command=[], network_mode="none", remove=True, stderr=True,
    )
    assert out.decode().strip().splitlines()[-1] == "2.13.0+cpu"
    settings = Settings(base_image=docker_base_image, ngc_api_key_file=docker_context / "absent")
    again = images.ensure_train_image(docker_client, settings, context_dir=docker_context)
    assert (again.tag, again.built) == (train_image.tag, False)
    assert again.seconds < 5
    record = (images.cache_dir() / "train-image.json").read_text()
    assert train_image.tag in record


@pytest.mark.docker
def test_build_failure_raises_with_output_tail(docker_client, docker_base_image, docker_context, tmp_path):
    root = _context_copy(docker_context, tmp_path / "ctx")
    dockerfile = root / images.TRAIN_DOCKERFILE
    dockerfile.write_text(dockerfile.read_text().replace("USER root", "USER root\nRUN echo about-to-fail && exit 3", 1))
    settings = Settings(base_image=docker_base_image, ngc_api_key_file=tmp_path / "absent")
    with pytest.raises(RunnerError) as info:
        images.ensure_train_image(docker_client, settings, context_dir=root)
    assert "returned a non-zero code: 3" in str(info.value)
    assert "about-to-fail" in info.value.stderr_tail


def test_missing_api_key_says_where_it_goes_and_how_to_get_one(tmp_path):
    with pytest.raises(CredentialsError) as info:
        images.read_api_key(tmp_path / "api.key")
    text = str(info.value)
    assert str(tmp_path / "api.key") in text
    assert images.NGC_KEY_URL in text and "PYTRAIN_NGC_API_KEY_FILE" in text
    (tmp_path / "api.key").write_text("\n")
    with pytest.raises(CredentialsError, match="is empty"):
        images.read_api_key(tmp_path / "api.key")


@pytest.mark.docker
def test_missing_key_is_only_needed_when_the_base_must_be_pulled(docker_client, docker_base_image, tmp_path):
    assert images.ensure_base_image(docker_client, docker_base_image, tmp_path / "absent") is False
    with pytest.raises(CredentialsError, match="does not exist"):
        images.ensure_base_image(docker_client, "nvcr.io/nvidia/pytorch:99.99-py3", tmp_path / "absent")


@pytest.mark.docker
def test_api_key_absent_from_inspect_history_logs_and_errors(docker_client, docker_tracker, train_image, docker_base_image, docker_context, tmp_path):
    """A key that is read (the nvcr.io base is missing, so login is tried and fails offline) must
    show up nowhere: not in the error, the images, containers, history, build or task logs."""
    from pytrain.runners.docker import DockerRunner
    from pytrain.runners.base import Outcome, PreparedTask
    from pytrain.spec import MANIFEST, TaskSpec

    key = "nvapi-" + secrets.token_hex(24)
    key_file = tmp_path / "api.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)

    ngc = Settings(base_image="nvcr.io/nvidia/pytorch:99.99-py3", ngc_api_key_file=key_file)
    with pytest.raises(RunnerError) as info:  # CredentialsError or "cannot reach nvcr.io"
        images.ensure_train_image(docker_client, ngc, context_dir=docker_context)
    error_text = f"{info.value!s} {info.value!r} {info.value.stderr_tail} {info.value.__cause__!r} {info.value.__context__!r}"
    assert key not in error_text

    # a real run with the key file configured
    settings = Settings(
        base_image=docker_base_image, ngc_api_key_file=key_file, sources_dir=tmp_path / "sources",
        model_tasks_dir=tmp_path / "tasks", shm_size="64m",
    )
    spec = TaskSpec(task_id=401, model_name="keytest", class_list=["a", "b"])
    task_dir = settings.model_tasks_dir / "task-401-keytest"
    task_dir.mkdir(parents=True)
    settings.sources_dir.mkdir()
    spec.save(task_dir)
    (task_dir / MANIFEST).write_text("path,label,split\n")
    seen: dict[str, str] = {}

    class Peek(DockerRunner):
        def _remove(self, container: Any) -> None:  # inspect the container before it goes
            container.reload()
            seen["inspect"] = repr(container.attrs)
            super()._remove(container)

    import resource
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    runner = Peek(settings, client=docker_client, context_dir=docker_context,
                  memlock_bytes=-1 if hard == resource.RLIM_INFINITY else hard,
                  entrypoint=["sh", "-c", "env; cat /proc/1/cmdline; ls -la /tmp /task"], command=[])
    result = runner.run(PreparedTask(spec=spec, task_dir=task_dir, sources_root=settings.sources_dir), threading.Event())
    assert result.outcome is Outcome.SUCCEEDED, result
    assert key not in seen["inspect"]
    assert key not in (task_dir / "train.log").read_text()
    assert key not in (images.cache_dir() / "last-build.log").read_text()
    for command in (["docker", "image", "inspect", train_image.tag], ["docker", "history", "--no-trunc", train_image.tag]):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        assert out and key not in out
    assert key not in (images.cache_dir() / "train-image.json").read_text()


class _FakeImages:
    def __init__(self, pulled: list) -> None:
        self.pulled = pulled

    def get(self, name: str) -> None:
        import docker.errors

        raise docker.errors.ImageNotFound(f"No such image: {name}")

    def pull(self, name: str, auth_config: dict | None = None) -> None:
        self.pulled.append((name, auth_config))


class _FakeClient:
    """Stands in for the registry side only (unreachable here); the real SDK error types are used."""

    def __init__(self, login_error: Exception | None = None) -> None:
        self.logins: list[dict] = []
        self.pulled: list = []
        self.images = _FakeImages(self.pulled)
        self.login_error = login_error

    def login(self, **kwargs: Any) -> dict:
        self.logins.append(kwargs)
        if self.login_error is not None:
            raise self.login_error
        return {"Status": "Login Succeeded"}


def test_ngc_login_uses_oauthtoken_and_the_key_only_for_the_registry(tmp_path, caplog):
    caplog.set_level("DEBUG")
    key = "nvapi-" + secrets.token_hex(16)
    (tmp_path / "api.key").write_text(key + "\n")
    client = _FakeClient()
    assert images.ensure_base_image(client, "nvcr.io/nvidia/pytorch:24.10-py3", tmp_path / "api.key") is True
    assert client.logins == [{"username": "$oauthtoken", "password": key, "registry": "nvcr.io", "reauth": True}]
    assert client.pulled == [("nvcr.io/nvidia/pytorch:24.10-py3", {"username": "$oauthtoken", "password": key})]
    assert key not in caplog.text

    # a base image on another registry never reads the key file
    other = _FakeClient()
    assert images.ensure_base_image(other, "python:3.11-slim", tmp_path / "absent.key") is True
    assert other.logins == [] and other.pulled == [("python:3.11-slim", None)]


def test_rejected_ngc_key_is_a_credentials_error_without_the_key(tmp_path):
    import docker.errors
    import requests

    key = "nvapi-" + secrets.token_hex(16)
    (tmp_path / "api.key").write_text(key)
    response = requests.Response()
    response.status_code = 401
    error = docker.errors.APIError(f"401 Client Error: unauthorized: password {key}", response=response, explanation=f"unauthorized {key}")
    with pytest.raises(CredentialsError) as info:
        images.ensure_base_image(_FakeClient(login_error=error), "nvcr.io/nvidia/pytorch:24.10-py3", tmp_path / "api.key")
    text = f"{info.value} {info.value!r} {info.value.__cause__!r} {info.value.__context__!r}"
    assert "rejected the NGC API key" in text and images.NGC_KEY_URL in text
    assert key not in text
