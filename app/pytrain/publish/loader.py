"""Asking a running Triton server to (re)load a model after a new version was published.

In explicit model-control mode Triton loads only what it is told to: a ``load_model`` request makes
it re-read the model folder and serve the newest versions allowed by the version policy. In poll
mode it notices the new version folder by itself and refuses explicit requests; in ``none`` mode it
never reloads. Both refusals are expected and only logged.

Triton's model control answers only requests carrying the control key: every request here sends
:func:`pytrain.serving.control.control_headers` (a rollback's reload goes through
:func:`request_load` too, so it sends the key the same way).
"""

from __future__ import annotations

import logging

from pytrain.errors import PyTrainError
from pytrain.serving.control import control_headers
from pytrain.settings import Settings

log = logging.getLogger(__name__)

# Text of the refusal Triton sends when explicit load/unload is not allowed (poll or none mode).
_NOT_EXPLICIT = ("explicit model load / unload is not allowed", "polling is enabled")


def request_load(url: str, model_name: str, *, timeout_s: float = 120.0, settings: Settings | None = None) -> tuple[bool, str]:
    """Ask the Triton server at ``url`` (``host:port``, gRPC) to load ``model_name``, with the control key.

    Never raises: publishing has already succeeded; the outcome is returned and logged (a
    malformed key, too, as a reason; the key itself is never in it).

    Args:
        url: gRPC address, ``host:port``.
        model_name: the model folder name.
        timeout_s: how long loading (which includes Triton loading the model) may take, seconds.
        settings: where the control key comes from (default the process settings).

    Returns:
        ``(True, "")`` when Triton loaded it; ``(False, reason)`` otherwise (poll/none mode,
        unreachable server, load failure).
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        headers = control_headers(settings)
        with grpcclient.InferenceServerClient(url) as client:
            client.load_model(model_name, headers=headers, client_timeout=timeout_s)
    except PyTrainError as exc:  # the key is malformed or its file unreadable
        log.warning("cannot ask Triton at %s to load model %s: %s", url, model_name, exc)
        return False, f"cannot ask Triton at {url} to load model {model_name}: {exc}"
    except InferenceServerException as exc:
        message = str(exc.message() or exc)
        if any(text in message for text in _NOT_EXPLICIT):
            log.info("Triton at %s is not in explicit model-control mode; it picks up %s by polling (%s)", url, model_name, message)
            return False, f"Triton at {url} is not in explicit model-control mode: {message}"
        if "is restricted" in message:  # no key, or not the one the server was started with
            message += " (send the server's control key: PYTRAIN_TRITON_CONTROL_KEY or PYTRAIN_TRITON_CONTROL_KEY_FILE)"
        log.warning("Triton at %s did not load model %s: %s", url, model_name, message)
        return False, f"Triton at {url} did not load model {model_name}: {message}"
    except Exception as exc:  # grpc transport errors surface as various types
        log.warning("could not ask Triton at %s to load model %s: %s", url, model_name, exc)
        return False, f"could not reach Triton at {url}: {exc}"
    log.info("Triton at %s loaded model %s", url, model_name)
    return True, ""
