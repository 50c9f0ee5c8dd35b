"""The web console (``pytrain console``): the queue, runs, sweeps, models, workers and sources in a browser.

Server-rendered (FastAPI + Jinja2 templates), live by server-sent events, no JavaScript build and
nothing from a CDN: one small script and one stylesheet served from this package. It reads only
PyTrain's own records (the task queue, task folders, the sweeps, the model repository, the video
catalog) and acts through the same functions as the CLI (cancel, retry, submit's checks, rollback,
sweep cancel).
See ``docs/console.md``.

Example::

    pytrain console                                   # http://127.0.0.1:8080, a login link (a token made at start) on stderr
    PYTRAIN_CONSOLE_PASSWORD_HASH=$(pytrain console --hash-password) pytrain console --host 0.0.0.0
"""

from __future__ import annotations

import sys

from pytrain.console.security import check_bind, hash_password, new_token
from pytrain.settings import Settings


def create_app(settings: Settings, **kwargs):  # noqa: ANN201 - FastAPI is imported on use
    """The console's ASGI app (:func:`pytrain.console.app.create_app`)."""
    from pytrain.console.app import create_app as make

    return make(settings, **kwargs)


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the console until interrupted.

    Without ``PYTRAIN_CONSOLE_PASSWORD_HASH`` a login token is made (valid until the console stops) and a login link with
    it printed on stderr (loopback only).

    Raises:
        ConfigurationError: a non-loopback ``host`` without a configured password (before anything starts).
    """
    import uvicorn

    stored = settings.console_password_hash.get_secret_value() if settings.console_password_hash else None
    check_bind(host, stored)
    token = None if stored else new_token()
    app = create_app(settings, host=host, login_token=token)
    shown = f"[{host}]" if ":" in host else host
    if token:
        print(f"PyTrain console: http://{shown}:{port}/login?token={token} (the token is valid until the console stops; "
              "set PYTRAIN_CONSOLE_PASSWORD_HASH for a password)", file=sys.stderr, flush=True)
    else:
        print(f"PyTrain console: http://{shown}:{port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5, proxy_headers=False)


__all__ = ["check_bind", "create_app", "hash_password", "serve"]
