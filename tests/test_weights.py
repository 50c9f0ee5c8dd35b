"""Pretrained weights: `pytrain weights fetch/list` against a real local HTTP server, the table
against torchvision, and the claim-time refusal of a pretrained task whose weights are missing.

The download is torch.hub's real code over real HTTP (``http.server`` in a thread); the only
stand-in is one extra entry in the architecture table, because no small file has a SHA-256 that
starts with a real torchvision prefix. Budget: the whole file in under 15 s.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pytrain import weights
from pytrain.cli.main import app
from pytrain.errors import WeightsError
from pytrain.weights import CHECKPOINTS_DIR, PRETRAINED_WEIGHTS, PretrainedWeights

PAYLOAD = os.urandom(300_000)  # a real file, big enough for several reads of torch.hub's 8 KiB chunks
PREFIX = hashlib.sha256(PAYLOAD).hexdigest()[:8]


class _Server:
    """A local HTTP server for a folder; counts the GET requests per path."""

    def __init__(self, folder: Path) -> None:
        self.gets: dict[str, int] = {}
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.gets[self.path] = server.gets.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """``(server, torch_home)``: ``/models/testnet-<prefix>.pth`` holds PAYLOAD (its name carries its
    hash), ``/models/corruptnet-<prefix>.pth`` holds other bytes under the same prefix; both are in
    the architecture table; PYTRAIN_TORCH_HOME / PYTRAIN_WEIGHTS_BASE_URL point at them."""
    www = tmp_path / "www" / "models"
    www.mkdir(parents=True)
    (www / f"testnet-{PREFIX}.pth").write_bytes(PAYLOAD)
    (www / f"corruptnet-{PREFIX}.pth").write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1]))  # one bit flipped
    monkeypatch.setitem(PRETRAINED_WEIGHTS, "testnet", PretrainedWeights("testnet", "testnet", "Test.V1", f"testnet-{PREFIX}.pth"))
    monkeypatch.setitem(PRETRAINED_WEIGHTS, "corruptnet", PretrainedWeights("corruptnet", "corruptnet", "Test.V1", f"corruptnet-{PREFIX}.pth"))
    server = _Server(tmp_path / "www")
    torch_home = tmp_path / "torch-home"
    monkeypatch.setenv("PYTRAIN_TORCH_HOME", str(torch_home))
    monkeypatch.setenv("PYTRAIN_WEIGHTS_BASE_URL", server.url)
    monkeypatch.setenv("PYTRAIN_DATA_DIR", str(tmp_path / "data"))
    from pytrain.settings import get_settings

    get_settings.cache_clear()
    yield server, torch_home
    get_settings.cache_clear()
    server.close()


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_fetch_downloads_verifies_with_progress_and_is_idempotent(served):
    server, torch_home = served
    target = torch_home / CHECKPOINTS_DIR / f"testnet-{PREFIX}.pth"

    first = _cli("weights", "fetch", "testnet")
    assert first.exit_code == 0, first.output
    assert target.read_bytes() == PAYLOAD
    assert f"testnet: {target} (downloaded and verified in" in first.stdout
    assert "293k/293k" in first.stderr  # torch.hub's tqdm bar (300,000 B in KiB units) reached its end
    assert server.gets == {f"/models/testnet-{PREFIX}.pth": 1}

    second = _cli("weights", "fetch", "testnet")
    assert second.exit_code == 0, second.output
    assert f"testnet: {target} (already there, verified)" in second.stdout
    assert server.gets == {f"/models/testnet-{PREFIX}.pth": 1}  # not downloaded again

    target.write_bytes(PAYLOAD[:1000])  # a damaged copy is replaced, not trusted
    third = _cli("weights", "fetch", "--no-progress", "testnet")
    assert third.exit_code == 0, third.output
    assert target.read_bytes() == PAYLOAD and server.gets[f"/models/testnet-{PREFIX}.pth"] == 2


def test_corrupted_download_is_rejected_and_leaves_no_file(served):
    _, torch_home = served
    result = _cli("weights", "fetch", "corruptnet")
    assert result.exit_code == 1
    assert isinstance(result.exception, WeightsError)
    assert "corruptnet" in str(result.exception) and f'invalid hash value (expected "{PREFIX}"' in str(result.exception)
    assert list((torch_home / CHECKPOINTS_DIR).iterdir()) == []  # neither the file nor torch.hub's .partial


def test_unknown_architecture_and_missing_file_are_named(served, monkeypatch):
    server, torch_home = served
    result = _cli("weights", "fetch", "testnet", "tiny")
    assert result.exit_code == 1 and "architecture 'tiny' has no pretrained weights" in str(result.exception)
    assert not (torch_home / CHECKPOINTS_DIR).exists()  # every name is checked before the first download

    monkeypatch.setitem(PRETRAINED_WEIGHTS, "nonet", PretrainedWeights("nonet", "nonet", "Test.V1", "nonet-0123abcd.pth"))
    with pytest.raises(WeightsError, match="cannot download .*/models/nonet-0123abcd.pth .*404"):
        weights.fetch_weights("nonet", torch_home, server.url, progress=False)
    assert list((torch_home / CHECKPOINTS_DIR).iterdir()) == []


def test_list_shows_architecture_file_size_and_verified(served):
    _, torch_home = served
    assert _cli("weights", "fetch", "--no-progress", "testnet").exit_code == 0
    folder = torch_home / CHECKPOINTS_DIR
    (folder / "resnet18-f37072fd.pth").write_bytes(b"not the real weights")  # damaged, named like the real file
    (folder / "stray.partial").write_bytes(b"x")  # an interrupted download: not listed

    result = _cli("weights", "list")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert lines["testnet"][1:] == [f"testnet-{PREFIX}.pth", "0.3", "MiB", "yes"]
    assert lines["frames_resnet18"][1:5] == ["resnet18-f37072fd.pth", "0.0", "MiB", "NO"]
    assert lines["r3d_18"][1:] == ["r3d_18-b3b3357e.pth", "-", "missing"]
    assert "stray.partial" not in result.stdout
    assert result.stdout.splitlines()[0] == f"weights folder: {torch_home}"


def test_table_matches_torchvision_and_training_reads_the_same_file(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision", reason="torchvision is needed to check the table against it")
    import torch.hub

    from pytrain.settings import Settings
    from pytrain.training.models import ARCHITECTURES, cached_weights_path

    assert weights.HASH_REGEX.pattern == torch.hub.HASH_REGEX.pattern
    assert set(PRETRAINED_WEIGHTS) == {name for name, arch in ARCHITECTURES.items() if arch.family != "tiny"}
    base_url = Settings.model_fields["weights_base_url"].default
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # what the runners set for training
    for entry in PRETRAINED_WEIGHTS.values():
        default = torchvision.models.get_model_weights(entry.torchvision_model).DEFAULT
        assert (entry.url(base_url), str(default)) == (default.url, entry.weights)
        assert cached_weights_path(default.url) == entry.path(tmp_path)


def test_pretrained_task_without_weights_fails_at_claim_with_the_fetch_command(settings, engine):
    from fixtures.clips import write_tree

    from pytrain.db import TaskQueue
    from pytrain.orchestrator import Orchestrator
    from pytrain.runners import Outcome, RunResult
    from pytrain.sources import sync_sources

    class RecordingRunner:  # records the runs it was asked to start, and fails them
        name = "recording"
        runs: list[int] = []

        def run(self, task, cancel, stop=None):
            self.runs.append(task.task_id)
            return RunResult(Outcome.FAILED, 2, "not trained here")

        def cleanup_orphans(self, active_task_ids):
            return set()

    write_tree(settings.sources_dir, {"dataset1": {"cooking_bread": 3, "cooking_soup": 3, "drinking_water": 5}})
    sync_sources(settings, engine=engine, probe=False)
    queue = TaskQueue(engine)
    task = {"model_name": "kitchen", "sources": ["dataset1"], "classes": ["cooking", "drinking"], "architecture": "r3d_18",
            "pretrained": True}
    missing = queue.submit(task)
    runner = RecordingRunner()
    Orchestrator(settings, engine=engine, runner=runner, publisher=lambda *a, **k: None).run(exit_when_idle=True)
    row = queue.get(missing)
    assert runner.runs == []  # refused before the runner started anything
    assert row["status"] == "failed"
    path = settings.torch_home / CHECKPOINTS_DIR / "r3d_18-b3b3357e.pth"
    assert row["error"] == (
        f"cannot prepare task {missing}: pretrained weights for r3d_18 are missing: {path} does not exist "
        f"(hint: run `pytrain weights fetch r3d_18` on this host (weights folder PYTRAIN_TORCH_HOME={settings.torch_home}), "
        "or set pretrained to false)"
    )

    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")  # present: the claim goes on to the runner
    present = queue.submit({**task, "model_name": "kitchen2"})
    Orchestrator(settings, engine=engine, runner=runner, publisher=lambda *a, **k: None).run(exit_when_idle=True)
    assert runner.runs == [present]
    assert queue.get(present)["error"].startswith("not trained here")
