"""Asking a running Triton server to (re)load a model after a new version was published.

In explicit model-control mode Triton loads only what it is told to: a ``load_model`` request makes
it re-read the model folder and serve the newest versions allowed by the version policy. In poll
mode it notices the new version folder by itself and refuses explicit requests; in ``none`` mode it
never reloads. Both refusals are expected and only logged.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Text of the refusal Triton sends when explicit load/unload is not allowed (poll or none mode).
_NOT_EXPLICIT = ("explicit model load / unload is not allowed", "polling is enabled")


def request_load(url: str, model_name: str, *, timeout_s: float = 120.0) -> tuple[bool, str]:
    """Ask the Triton server at ``url`` (``host:port``, gRPC) to load ``model_name``.

    Never raises: publishing has already succeeded; the outcome is returned and logged.

    Args:
        url: gRPC address, ``host:port``.
        model_name: the model folder name.
        timeout_s: how long loading (which includes Triton loading the model) may take, seconds.

    Returns:
        ``(True, "")`` when Triton loaded it; ``(False, reason)`` otherwise (poll/none mode,
        unreachable server, load failure).
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        with grpcclient.InferenceServerClient(url) as client:
            client.load_model(model_name, client_timeout=timeout_s)
    except InferenceServerException as exc:
        message = str(exc.message() or exc)
        if any(text in message for text in _NOT_EXPLICIT):
            log.info("Triton at %s is not in explicit model-control mode; it picks up %s by polling (%s)", url, model_name, message)
            return False, f"Triton at {url} is not in explicit model-control mode: {message}"
        log.warning("Triton at %s did not load model %s: %s", url, model_name, message)
        return False, f"Triton at {url} did not load model {model_name}: {message}"
    except Exception as exc:  # grpc transport errors surface as various types
        log.warning("could not ask Triton at %s to load model %s: %s", url, model_name, exc)
        return False, f"could not reach Triton at {url}: {exc}"
    log.info("Triton at %s loaded model %s", url, model_name)
    return True, ""
