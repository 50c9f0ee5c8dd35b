"""Pretrained weights: which torchvision file each architecture starts from, fetching and checking it.

Training never downloads (its containers have no network): ``pretrained = true`` loads
``$TORCH_HOME/hub/checkpoints/<file>`` (:func:`pytrain.training.models.build_model`), and the
runners point ``TORCH_HOME`` at PyTrain's weights folder (``PYTRAIN_TORCH_HOME``, default
``<data_dir>/torch``), read-only. That folder is filled beforehand, on a host with network::

    pytrain weights fetch r3d_18 frames_resnet18     # download, verify, idempotent
    pytrain weights list                             # architecture, file, size, verified

The table :data:`PRETRAINED_WEIGHTS` maps each architecture to torchvision's weights file. It is
plain data so that the orchestrator, which may run without torch (the orchestrator-only image),
can refuse a claimed ``pretrained`` task whose file is missing before any run starts
(:func:`require_weights`). ``tests/test_weights.py`` checks the table against torchvision's own
``Weights.url`` (the ``DEFAULT`` weights of each model), so the two cannot drift apart silently.

torchvision's file names carry the first hex digits of the file's SHA-256 (``r3d_18-b3b3357e.pth``).
Downloading is :func:`torch.hub.download_url_to_file` with that prefix, exactly what
``torch.hub.load_state_dict_from_url(check_hash=True)`` does: it writes a ``.partial`` file beside
the target, hashes while it reads, and moves the file into place only when the hash matches (a
corrupted download raises and leaves nothing behind).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pytrain.errors import ConfigurationError, WeightsError

log = logging.getLogger(__name__)

#: Where torch keeps downloaded weights below ``TORCH_HOME`` (``torch.hub.get_dir()/checkpoints``).
CHECKPOINTS_DIR = Path("hub") / "checkpoints"

#: torch.hub's pattern for the hash prefix in a file name (``torch.hub.HASH_REGEX``; the test pins
#: them equal). Copied, not imported: listing and the claim-time check must work without torch.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")

_PARTIAL_SUFFIX = ".partial"  # torch.hub's temporary download files
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class PretrainedWeights:
    """The torchvision weights one architecture starts from.

    Attributes:
        architecture: the task's ``architecture`` (a key of ``pytrain.training.models.ARCHITECTURES``).
        torchvision_model: the model name torchvision knows them by (``get_model_weights(name)``).
        weights: the weights enum member (``DEFAULT`` of that model), for people reading the table.
        file_name: the file name of torchvision's URL, which carries the hash prefix.
    """

    architecture: str
    torchvision_model: str
    weights: str
    file_name: str

    @property
    def hash_prefix(self) -> str:
        """The first hex digits of the file's SHA-256, from its name (``b3b3357e``)."""
        match = HASH_REGEX.search(self.file_name)
        if match is None:  # pragma: no cover - every entry is checked by the tests
            raise ConfigurationError(f"weights file name {self.file_name!r} carries no hash prefix")
        return match.group(1)

    def url(self, base_url: str) -> str:
        """The download URL below ``base_url`` (``PYTRAIN_WEIGHTS_BASE_URL``)."""
        return f"{base_url.rstrip('/')}/{self.file_name}"

    def path(self, torch_home: Path) -> Path:
        """``<torch_home>/hub/checkpoints/<file_name>``: where torch looks for it."""
        return Path(torch_home) / CHECKPOINTS_DIR / self.file_name


#: Architecture -> the weights ``pretrained = true`` loads: Kinetics-400 for the video models,
#: ImageNet for the per-frame CNNs. ``tiny`` has none.
PRETRAINED_WEIGHTS: dict[str, PretrainedWeights] = {
    w.architecture: w
    for w in (
        PretrainedWeights("r3d_18", "r3d_18", "R3D_18_Weights.KINETICS400_V1", "r3d_18-b3b3357e.pth"),
        PretrainedWeights("mc3_18", "mc3_18", "MC3_18_Weights.KINETICS400_V1", "mc3_18-a90a0ba3.pth"),
        PretrainedWeights("r2plus1d_18", "r2plus1d_18", "R2Plus1D_18_Weights.KINETICS400_V1", "r2plus1d_18-91a641e6.pth"),
        PretrainedWeights("s3d", "s3d", "S3D_Weights.KINETICS400_V1", "s3d-d76dad2f.pth"),
        PretrainedWeights("mvit_v2_s", "mvit_v2_s", "MViT_V2_S_Weights.KINETICS400_V1", "mvit_v2_s-ae3be167.pth"),
        PretrainedWeights("swin3d_t", "swin3d_t", "Swin3D_T_Weights.KINETICS400_V1", "swin3d_t-7615ae03.pth"),
        PretrainedWeights("frames_resnet18", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth"),
        PretrainedWeights("frames_mobilenet_v3_small", "mobilenet_v3_small", "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
                          "mobilenet_v3_small-047dcff4.pth"),
        PretrainedWeights("frames_efficientnet_b0", "efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1",
                          "efficientnet_b0_rwightman-7f5810bc.pth"),
    )
}


def fetch_command(*architectures: str) -> str:
    """The command that fetches ``architectures``' weights (``pytrain weights fetch r3d_18``)."""
    return " ".join(("pytrain", "weights", "fetch", *architectures))


def pretrained_weights(architecture: str) -> PretrainedWeights:
    """The entry of :data:`PRETRAINED_WEIGHTS` for ``architecture``.

    Raises:
        ConfigurationError: ``architecture`` has no pretrained weights (``tiny``, a typo), naming
            those that have.
    """
    try:
        return PRETRAINED_WEIGHTS[architecture]
    except KeyError:
        known = ", ".join(PRETRAINED_WEIGHTS)
        raise ConfigurationError(f"architecture {architecture!r} has no pretrained weights", hint=f"one of: {known}") from None


def file_sha256(path: Path) -> str:
    """The SHA-256 of ``path`` as 64 hex digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(path: Path) -> bool:
    """Whether ``path`` exists and its SHA-256 starts with the hash prefix in its name (torch.hub's check)."""
    match = HASH_REGEX.search(Path(path).name)
    if match is None or not Path(path).is_file():
        return False
    return file_sha256(path).startswith(match.group(1))


def require_weights(architecture: str, torch_home: Path) -> Path:
    """The weights file of ``architecture`` in ``torch_home``; raises when it is not there.

    Only its presence is checked (cheap enough for every claim): :func:`fetch_weights` puts files
    in place only after their hash was verified.

    Raises:
        ConfigurationError: the architecture has no pretrained weights, or its file is missing;
            the message holds the exact ``pytrain weights fetch`` command.
    """
    entry = pretrained_weights(architecture)
    path = entry.path(torch_home)
    if not path.is_file():
        raise ConfigurationError(
            f"pretrained weights for {architecture} are missing: {path} does not exist",
            hint=f"run `{fetch_command(architecture)}` on this host (weights folder PYTRAIN_TORCH_HOME={torch_home}), "
            "or set pretrained to false",
        )
    return path


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_weights` did for one architecture.

    Attributes:
        architecture: the architecture.
        path: the verified file.
        downloaded: ``False`` when a verified file was already there.
        seconds: wall time of the call (seconds).
    """

    architecture: str
    path: Path
    downloaded: bool
    seconds: float


def fetch_weights(architecture: str, torch_home: Path, base_url: str, *, progress: bool = True) -> FetchResult:
    """Download ``architecture``'s weights into ``torch_home`` unless a verified copy is there.

    Args:
        architecture: a key of :data:`PRETRAINED_WEIGHTS`.
        torch_home: PyTrain's weights folder (``PYTRAIN_TORCH_HOME``); created if missing.
        base_url: where the files are (``PYTRAIN_WEIGHTS_BASE_URL``).
        progress: draw torch.hub's progress bar (tqdm) on stderr.

    Returns:
        The :class:`FetchResult`.

    Raises:
        ConfigurationError: the architecture has no pretrained weights.
        WeightsError: torch is not installed, the download fails, or the file's SHA-256 does
            not match its name (nothing is left behind: not the file, not a ``.partial``).
    """
    started = time.monotonic()
    entry = pretrained_weights(architecture)
    path = entry.path(torch_home)
    if path.is_file():
        if is_verified(path):
            return FetchResult(architecture, path, False, time.monotonic() - started)
        log.warning("%s does not match its hash prefix %s: downloading it again", path, entry.hash_prefix)
    try:
        from torch.hub import download_url_to_file  # the orchestrator-only image has no torch
    except ImportError as exc:
        raise WeightsError(f"cannot download weights here: {exc}", hint="run the command where torch is installed (pip install 'pytrain[train]')") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    url = entry.url(base_url)
    log.info("downloading %s -> %s", url, path)
    try:
        download_url_to_file(url, str(path), hash_prefix=entry.hash_prefix, progress=progress)
    except RuntimeError as exc:  # torch.hub's hash mismatch
        path.unlink(missing_ok=True)  # an older file of that name failed the check above too
        raise WeightsError(f"the download of {url} is corrupted: {exc}", hint="run the command again; check PYTRAIN_WEIGHTS_BASE_URL") from exc
    except OSError as exc:  # URLError, HTTPError, a full disk
        raise WeightsError(f"cannot download {url} to {path}: {exc}", hint="check the network and PYTRAIN_WEIGHTS_BASE_URL") from exc
    return FetchResult(architecture, path, True, time.monotonic() - started)


@dataclass(frozen=True)
class WeightsFile:
    """One row of :func:`list_weights`.

    Attributes:
        architecture: the architecture using it, or ``None`` for a file no architecture uses.
        file_name: the file's name.
        path: where it is (or would be) in the weights folder.
        size: its size in bytes; ``None`` when it is missing.
        verified: its SHA-256 matches its name's prefix; ``None`` when it is missing.
    """

    architecture: str | None
    file_name: str
    path: Path
    size: int | None
    verified: bool | None


def list_weights(torch_home: Path) -> list[WeightsFile]:
    """Every architecture's weights file (present or not), then any other file in the folder.

    Hashes every present file (a few tenths of a second per 100 MB). Unfinished downloads
    (``*.partial``) are not listed.
    """
    folder = Path(torch_home) / CHECKPOINTS_DIR
    rows = []
    for entry in PRETRAINED_WEIGHTS.values():
        path = entry.path(torch_home)
        present = path.is_file()
        rows.append(WeightsFile(entry.architecture, entry.file_name, path, path.stat().st_size if present else None,
                                is_verified(path) if present else None))
    known = {entry.file_name for entry in PRETRAINED_WEIGHTS.values()}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.name not in known and not path.name.endswith(_PARTIAL_SUFFIX):
                rows.append(WeightsFile(None, path.name, path, path.stat().st_size, is_verified(path)))
    return rows


__all__ = [
    "CHECKPOINTS_DIR", "FetchResult", "HASH_REGEX", "PRETRAINED_WEIGHTS", "PretrainedWeights", "WeightsFile", "fetch_command",
    "fetch_weights", "file_sha256", "is_verified", "list_weights", "pretrained_weights", "require_weights",
]
