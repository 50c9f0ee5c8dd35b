"""The key that guards Triton's model control: one place that finds it, creates it and sends it.

Every Triton PyTrain starts (``pytrain serve``, docker-compose) restricts its ``model-repository``
(index, load, unload: a load may carry a config override and file contents) and ``model-config``
APIs on gRPC and HTTP to requests carrying the header ``pytrain-control-key``; inference, health
and metadata stay open unless ``PYTRAIN_TRITON_INFERENCE_KEY`` restricts inference too
(docs/adr/0006-triton-control-key.md).

Where the key comes from, first match wins:

1. ``PYTRAIN_TRITON_CONTROL_KEY`` (a ``SecretStr`` setting);
2. the key file ``PYTRAIN_TRITON_CONTROL_KEY_FILE`` (default ``<data_dir>/triton_control.key``);
3. a new random key written to that file with mode 0600 (only where ``create=True``: the server
   side and the publisher on the same host; a client never creates one).

Everything that asks Triton to load, unload or read configs sends :func:`control_headers`; the key
itself never goes into logs, error messages or task rows (:func:`redact` for command lines).

Example::

    headers = control_headers(settings)        # {"triton-grpc-protocol-pytrain-control-key": "..."}
    grpc_client.load_model("kitchen", headers=headers)
    http_client.load_model("kitchen", headers=control_headers(settings, protocol="http"))
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from pytrain.errors import ConfigurationError
from pytrain.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Header (lower case: gRPC metadata keys are) that carries the control key over HTTP.
CONTROL_HEADER = "pytrain-control-key"
#: Header that carries the optional inference key over HTTP.
INFERENCE_HEADER = "pytrain-inference-key"
#: Triton expects a restricted gRPC protocol's header under this prefix (seen in its refusal:
#: "expecting header 'triton-grpc-protocol-pytrain-control-key'").
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
#: Triton API groups that need the control key (names as ``--grpc-restricted-protocol`` takes them).
CONTROL_APIS = ("model-repository", "model-config")
KEY_FILE_NAME = "triton_control.key"

Protocol = Literal["grpc", "http"]

# A key goes into a header and into Triton's `<apis>:<header>=<value>` flag: no separators in it.
_KEY = re.compile(r"^[A-Za-z0-9._~-]{16,256}$")
_KEY_HELP = ("use 16..256 characters from A-Z a-z 0-9 . _ ~ -, e.g. "
             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def key_file(settings: Settings) -> Path:
    """The control key's file: ``PYTRAIN_TRITON_CONTROL_KEY_FILE``, else ``<data_dir>/triton_control.key``."""
    return settings.triton_control_key_file or settings.data_dir / KEY_FILE_NAME


def _checked(value: str, source: str) -> SecretStr:
    # The message names where the bad key came from and its length, never the key.
    if not _KEY.match(value):
        raise ConfigurationError(f"the Triton control key from {source} is not usable ({len(value)} characters)", hint=_KEY_HELP)
    return SecretStr(value)


def control_key(settings: Settings | None = None, *, create: bool = True) -> SecretStr | None:
    """The key Triton's model-control APIs require.

    Args:
        settings: default the process settings.
        create: generate the key file (mode 0600) when there is neither a setting nor a file.

    Returns:
        The key; ``None`` only when ``create`` is false and no key is configured or readable.

    Raises:
        ConfigurationError: the configured key or the key file's content is malformed (the message
            names the source, never the key), or the file cannot be read or created.
    """
    settings = settings or get_settings()
    if settings.triton_control_key is not None:
        return _checked(settings.triton_control_key.get_secret_value(), "PYTRAIN_TRITON_CONTROL_KEY")
    path = key_file(settings)
    try:
        return _checked(path.read_text(encoding="ascii").strip(), str(path))
    except FileNotFoundError:
        if not create:
            return None
    except (OSError, UnicodeDecodeError) as exc:
        if not create:
            log.debug("cannot read the Triton control key file %s: %s", path, exc)
            return None
        raise ConfigurationError(f"cannot read the Triton control key file {path}: {exc}",
                                 hint="fix its permissions, or set PYTRAIN_TRITON_CONTROL_KEY") from exc
    return _create_key_file(path)


def _create_key_file(path: Path) -> SecretStr:
    """Write a new random key to ``path`` (mode 0600) without replacing one another process wrote first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
            os.link(tmp, path)  # no-replace: a racing process's key wins, and both use it
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        key = _checked(path.read_text(encoding="ascii").strip(), str(path))
    except OSError as exc:
        raise ConfigurationError(f"cannot create the Triton control key file {path}: {exc}",
                                 hint="make its folder writable, or set PYTRAIN_TRITON_CONTROL_KEY") from exc
    log.info("generated a Triton control key in %s (mode 0600)", path)
    return key


def _header(name: str, protocol: Protocol) -> str:
    return GRPC_HEADER_PREFIX + name if protocol == "grpc" else name


def control_headers(settings: Settings | None = None, *, protocol: Protocol = "grpc", create: bool = True) -> dict[str, str]:
    """The headers every model-control request (load, unload, repository index, config) sends.

    The one helper for publishing's load request, rollbacks and anything else that controls
    models; pass the result as ``headers=`` to ``tritonclient.grpc`` (``protocol="grpc"``) or
    ``tritonclient.http`` (``protocol="http"``). ``create=False`` (clients, possibly on other
    hosts) gives ``{}`` when no key is known.

    Raises:
        ConfigurationError: see :func:`control_key`.
    """
    key = control_key(settings, create=create)
    return {} if key is None else {_header(CONTROL_HEADER, protocol): key.get_secret_value()}


def inference_headers(settings: Settings | None = None, *, protocol: Protocol = "grpc") -> dict[str, str]:
    """The inference key's header when ``PYTRAIN_TRITON_INFERENCE_KEY`` is set, else ``{}``.

    Raises:
        ConfigurationError: the inference key is malformed.
    """
    settings = settings or get_settings()
    if settings.triton_inference_key is None:
        return {}
    key = _checked(settings.triton_inference_key.get_secret_value(), "PYTRAIN_TRITON_INFERENCE_KEY")
    return {_header(INFERENCE_HEADER, protocol): key.get_secret_value()}


def restricted_api_args(control: SecretStr, inference: SecretStr | None = None) -> list[str]:
    """``tritonserver`` flags restricting model control (and optionally inference) on gRPC and HTTP.

    Example: ``--grpc-restricted-protocol=model-repository,model-config:pytrain-control-key=KEY``.
    """
    rules = [(",".join(CONTROL_APIS), CONTROL_HEADER, control)]
    if inference is not None:
        rules.append(("inference", INFERENCE_HEADER, inference))
    args = []
    for apis, header, key in rules:
        for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
            args.append(f"{flag}={apis}:{header}={key.get_secret_value()}")
    return args


def redact(text: str, *keys: SecretStr | None) -> str:
    """``text`` with every one of ``keys`` replaced by ``**********`` (for logged command lines and log tails)."""
    for key in keys:
        if key is not None and key.get_secret_value():
            text = text.replace(key.get_secret_value(), "**********")
    return text
