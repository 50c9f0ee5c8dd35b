"""The console's web app: FastAPI routes over Jinja2 templates, live updates by server-sent events.

Every page is rendered on the server from :mod:`pytrain.console.views`; the only script is the
console's own ``static/console.js`` (it follows ``/events`` and updates status, progress bars and
versions in place). Actions are plain HTML forms posted with the session's CSRF token and
answered with a redirect (POST-redirect-GET); a POST without a login or without the token gets
403 and changes nothing (:func:`_action`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from pytrain.console import views
from pytrain.console.form import FORM, form_fields, submit_form
from pytrain.console.security import CSRF_FIELD, SECURITY_HEADERS, csrf_ok, is_loopback, new_token, verify_password
from pytrain.db import STATUSES, TaskQueue
from pytrain.errors import PyTrainError, SweepNotFoundError, TaskNotFoundError
from pytrain.settings import Settings
from pytrain.sweeps.params import format_value
from pytrain.sweeps.store import SweepStore

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
#: Seconds between two looks at the database for a live stream, and the longest a stream lasts
#: (EventSource reconnects by itself; a bounded stream lets a server stop without waiting).
LIVE_INTERVAL_S = 0.5
LIVE_MAX_S = 300.0
_USER = "user"


class Forbidden(Exception):
    """A POST without a login or without the session's CSRF token (answered 403)."""


class LoginRequired(Exception):
    """A page asked for without a login where pages need one (answered with the login page)."""


router = APIRouter()


def create_app(settings: Settings, *, host: str = "127.0.0.1", engine=None, login_token: str | None = None) -> FastAPI:
    """The console app on ``settings``' database and folders.

    Args:
        host: the address it is served on: on a non-loopback one every page needs a login.
        engine: the database (default :func:`pytrain.db.get_engine` of ``settings``).
        login_token: the token (made at start) that logs in without a password (when none is configured).
    """
    from pytrain.db import check_schema, get_engine

    engine = engine or get_engine(settings)
    check_schema(engine)
    app = FastAPI(title="PyTrain console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.queue, app.state.sweeps = settings, TaskQueue(engine), SweepStore(engine, settings)
    app.state.public, app.state.login_token = not is_loopback(host), login_token
    secret = settings.console_secret_key.get_secret_value() if settings.console_secret_key else new_token()
    app.add_middleware(SessionMiddleware, secret_key=secret, session_cookie="pytrain_console", same_site="strict",
                       https_only=settings.console_secure_cookie, max_age=settings.console_session_seconds)
    app.mount("/static", StaticFiles(directory=_HERE / "static"), name="static")
    templates = Jinja2Templates(directory=_HERE / "templates")
    templates.env.globals.update(statuses=STATUSES, csrf_field=CSRF_FIELD)
    templates.env.filters["clock"] = lambda seconds: time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))
    templates.env.filters["param"] = format_value
    app.state.templates = templates

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(PyTrainError, _error_page)
    app.add_exception_handler(LoginRequired, _to_login)
    app.include_router(router)
    return app


# -- helpers ------------------------------------------------------------------------------------
def _logged_in(request: Request) -> bool:
    return bool(request.session.get(_USER))


def _csrf(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    if not request.session.get(CSRF_FIELD):
        request.session[CSRF_FIELD] = new_token()
    return request.session[CSRF_FIELD]


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    flash = request.session.pop("flash", None)
    context.update(request=request, logged_in=_logged_in(request), csrf=_csrf(request), flash=flash,
                   login_required=request.app.state.public)
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status_code)


def _page_login(request: Request) -> None:
    """A page's dependency: open without a login on a loopback address only.

    Raises:
        LoginRequired: answered with a redirect to the login page (403 for the event stream).
    """
    if request.app.state.public and not _logged_in(request):
        raise LoginRequired()


async def _to_login(request: Request, exc: Exception) -> Response:
    if request.url.path == "/events":
        return JSONResponse({"error": "log in first"}, status_code=403)
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


async def _action(request: Request) -> dict[str, Any]:
    """The posted form of an action, after checking the login and the CSRF token.

    Raises:
        Forbidden: no login, or the token is missing or not the session's.
    """
    form = await request.form()
    if not _logged_in(request) or not csrf_ok(request.session.get(CSRF_FIELD), form.get(CSRF_FIELD)):
        raise Forbidden()
    return dict(form)


def _back(request: Request, path: str, message: str) -> RedirectResponse:
    request.session["flash"] = message
    return RedirectResponse(path, status_code=303)


async def _forbidden(request: Request, exc: Exception) -> Response:
    return HTMLResponse("403 Forbidden: log in, and send the form from the console's own page (CSRF token).", status_code=403)


async def _error_page(request: Request, exc: Exception) -> Response:
    status = 404 if isinstance(exc, (TaskNotFoundError, SweepNotFoundError)) else 400
    return _render(request, "error.html", status_code=status, error=str(exc))


def _safe_next(target: str | None) -> str:
    """Only a path of this console (``/tasks``), never another site (``//evil``)."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/tasks"


# -- pages --------------------------------------------------------------------------------------
@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    """The Tasks page."""
    return RedirectResponse("/tasks", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str | None = None, token: str | None = None) -> Response:
    """The login form; ``?token=`` (the link printed at start) logs in at once."""
    expected = request.app.state.login_token
    if token and expected and csrf_ok(expected, token):  # the link printed at start
        _log_in(request)
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render(request, "login.html", next=_safe_next(next), error=None)


@router.get("/tasks", dependencies=[Depends(_page_login)], response_class=HTMLResponse)
async def tasks(request: Request, status: str | None = None, model: str | None = None, sweep: str | None = None,
                before: int | None = None) -> Response:
    """The Tasks page: one page of tasks, newest first, filtered by status, model and sweep."""
    data = await run_in_threadpool(views.tasks_page, request.app.state.queue, status=status or None, model=model or None,
                                   sweep=sweep or None, before=before)
    return _render(request, "tasks.html", status=status or "", model=model or "", sweep=sweep or "", **data)


@router.get("/tasks.json", dependencies=[Depends(_page_login)])
async def tasks_json(request: Request, status: str | None = None, model: str | None = None, sweep: str | None = None,
                     before: int | None = None) -> Response:
    """The Tasks page as JSON: ``{"tasks": [every column but metrics, with "state"], "next_before", "counts"}``."""
    data = await run_in_threadpool(views.tasks_page, request.app.state.queue, status=status or None, model=model or None,
                                   sweep=sweep or None, before=before)
    tasks = [{**{k: v for k, v in t["row"].to_dict().items() if k != "metrics"}, "state": t["state"]} for t in data["tasks"]]
    return JSONResponse(jsonable_encoder({"tasks": tasks, "next_before": data["next_before"], "counts": data["counts"]}))


@router.get("/tasks/{task_id:int}.json", dependencies=[Depends(_page_login)])
async def task_json(request: Request, task_id: int) -> Response:
    """One task as JSON, as ``pytrain show`` prints it: every column, with its runs under "runs"."""
    queue: TaskQueue = request.app.state.queue
    row, runs = await run_in_threadpool(lambda: (queue.get(task_id), queue.runs(task_id)))
    return JSONResponse(jsonable_encoder({**row.to_dict(), "runs": runs}))


@router.get("/tasks/{task_id}", dependencies=[Depends(_page_login)], response_class=HTMLResponse)
async def task(request: Request, task_id: int) -> Response:
    """The Task page: every column, runs, curves, per-class figures, the log tail."""
    data = await run_in_threadpool(views.task_page, request.app.state.queue, request.app.state.settings, task_id)
    return _render(request, "task.html", **data)


@router.get("/tasks/{task_id}/tracking", dependencies=[Depends(_page_login)])
async def tracking(request: Request, task_id: int) -> Response:
    """A redirect to the MLflow UI's page of the task's latest run."""
    link = await run_in_threadpool(views.tracking_link, request.app.state.queue, request.app.state.settings, task_id)
    return RedirectResponse(link, status_code=303)


@router.get("/submit", dependencies=[Depends(_page_login)], response_class=HTMLResponse)
async def submit_page(request: Request) -> Response:
    """The Submit form, made from the column table and the training options."""
    return _render(request, "submit.html", fields=form_fields(), values={}, errors={}, form_error=None)


@router.get("/models", dependencies=[Depends(_page_login)], response_class=HTMLResponse)
async def models(request: Request) -> Response:
    """The Models page: every version, what Triton serves and its state, rollback."""
    from pytrain.publish.versions import list_versions_live

    settings = request.app.state.settings
    rows, live = await run_in_threadpool(list_versions_live, settings, None, settings.triton_grpc_url)
    return _render(request, "models.html", rows=rows, live=live, triton=settings.triton_grpc_url or f"127.0.0.1:{settings.triton_grpc_port}")


@router.get("/workers", dependencies=[Depends(_page_login)], response_class=HTMLResponse)
async def workers(request: Request) -> Response:
    """The Workers page: the live orchestrators and their current tasks."""
    return _render(request, "workers.html", workers=await run_in_threadpool(views.workers_page, request.app.state.queue))


@router.get("/sweeps", dependencies=[Depends(_page_login)], response_class=HTMLResponse)
async def sweeps(request: Request) -> Response:
    """The Sweeps page: every sweep, newest first (``pytrain sweep list``'s rows)."""
    return _render(request, "sweeps.html", sweeps=await run_in_threadpool(request.app.state.sweeps.list))


@router.get("/sweeps.json", dependencies=[Depends(_page_login)])
async def sweeps_json(request: Request) -> Response:
    """The Sweeps page as JSON: ``{"sweeps": [pytrain sweep list's rows]}``."""
    return JSONResponse(jsonable_encoder({"sweeps": await run_in_threadpool(request.app.state.sweeps.list)}))


@router.get("/sweeps/{name}.json", dependencies=[Depends(_page_login)])
async def sweep_json(request: Request, name: str) -> Response:
    """One sweep as JSON, as ``pytrain sweep show --json`` prints it."""
    return JSONResponse(jsonable_encoder(await run_in_threadpool(request.app.state.sweeps.summary, name)))


@router.get("/sweeps/{name}", dependencies=[Depends(_page_login)], response_class=HTMLResponse)
async def sweep(request: Request, name: str) -> Response:
    """The Sweep page: its trials (the best marked), the parameter importances, cancel
    (``pytrain sweep show``'s record)."""
    from pytrain.sweeps.study import MIN_TRIALS_FOR_IMPORTANCE

    summary = await run_in_threadpool(request.app.state.sweeps.summary, name)
    return _render(request, "sweep.html", sweep=summary, min_importance=MIN_TRIALS_FOR_IMPORTANCE)


@router.get("/sources", dependencies=[Depends(_page_login)], response_class=HTMLResponse)
async def sources(request: Request) -> Response:
    """The Sources page: the catalog of every registered dataset, bad files."""
    data = await run_in_threadpool(views.sources_page, request.app.state.settings, request.app.state.queue)
    return _render(request, "sources.html", datasets=data)


@router.get("/events", dependencies=[Depends(_page_login)])
async def events(request: Request, ids: str = "") -> Response:
    """Server-sent events of the tasks ``ids`` (comma-separated): their live state."""
    wanted = views.parse_ids(ids)
    return StreamingResponse(_live(request, wanted), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


async def _live(request: Request, ids: list[int]) -> AsyncIterator[str]:
    """Server-sent events: the :func:`views.task_state` of ``ids`` whenever one changed."""
    queue: TaskQueue = request.app.state.queue
    last: dict[int, dict[str, Any]] = {}
    started = time.monotonic()
    yield "retry: 1000\n\n"
    while ids and time.monotonic() - started < LIVE_MAX_S and not await request.is_disconnected():
        try:
            states = [views.task_state(row) for row in await run_in_threadpool(queue.states, ids)]
        except PyTrainError as exc:  # the database went away: say so, the browser reconnects
            log.warning("console live view: %s", exc)
            return
        changed = [s for s in states if last.get(s["id"]) != s]
        last.update({s["id"]: s for s in changed})
        if changed:
            yield f"data: {json.dumps(changed)}\n\n"
        await asyncio.sleep(LIVE_INTERVAL_S)


def _log_in(request: Request) -> None:
    """A fresh session (new CSRF token) for the logged-in user."""
    request.session.clear()
    request.session[_USER] = "admin"
    request.session[CSRF_FIELD] = new_token()


# -- actions ------------------------------------------------------------------------------------
@router.post("/login")
async def login(request: Request) -> Response:
    """Check the password (or the token made at start) and start a fresh session."""
    form = await request.form()
    if not csrf_ok(request.session.get(CSRF_FIELD), form.get(CSRF_FIELD)):
        raise Forbidden()
    settings: Settings = request.app.state.settings
    password, stored = str(form.get("password") or ""), settings.console_password_hash
    token = request.app.state.login_token
    if stored:  # scrypt takes ~50 ms: off the event loop
        ok = await run_in_threadpool(verify_password, password, stored.get_secret_value())
    else:
        ok = bool(token) and csrf_ok(token, password)
    if not ok:
        log.warning("console: a failed login from %s", request.client.host if request.client else "?")
        return _render(request, "login.html", status_code=401, next=_safe_next(str(form.get("next") or "")), error="wrong password")
    _log_in(request)
    return RedirectResponse(_safe_next(str(form.get("next") or "")), status_code=303)


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session."""
    await _action(request)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.post("/submit")
async def submit(request: Request) -> Response:
    """Insert the task the form describes, or show the form again with each error beside its field."""
    form = await _action(request)
    settings, queue = request.app.state.settings, request.app.state.queue
    task_id, errors = await run_in_threadpool(submit_form, form, queue=queue, settings=settings)
    if task_id is not None:
        return _back(request, f"/tasks/{task_id}", f"task {task_id} queued")
    return _render(request, "submit.html", status_code=400, fields=form_fields(), values=form, errors=errors,
                   form_error=errors.get(FORM))


@router.post("/tasks/{task_id}/cancel")
async def cancel(request: Request, task_id: int) -> Response:
    """Cancel a queued or running task (its run stops within seconds)."""
    form = await _action(request)
    queue: TaskQueue = request.app.state.queue
    done = await run_in_threadpool(queue.cancel, task_id)
    message = f"task {task_id} cancelled" if done else f"task {task_id} had already ended; nothing to cancel"
    return _back(request, _safe_next(str(form.get("next") or f"/tasks/{task_id}")), message)


@router.post("/tasks/{task_id}/retry")
async def retry(request: Request, task_id: int) -> Response:
    """Queue a failed or cancelled task again."""
    form = await _action(request)
    await run_in_threadpool(request.app.state.queue.retry, task_id)
    return _back(request, _safe_next(str(form.get("next") or f"/tasks/{task_id}")), f"task {task_id} queued again")


@router.post("/sweeps/{name}/cancel")
async def cancel_sweep(request: Request, name: str) -> Response:
    """Cancel a sweep as ``pytrain sweep cancel`` does: no more trials, its queued and running trials cancelled."""
    await _action(request)
    cancelled = await run_in_threadpool(request.app.state.sweeps.cancel, name)
    return _back(request, f"/sweeps/{name}", f"sweep {name} cancelled ({len(cancelled)} trial task(s) cancelled)")


@router.post("/models/{model}/rollback")
async def rollback(request: Request, model: str) -> Response:
    """Serve the posted version of ``model`` (Triton reloads it)."""
    form = await _action(request)
    from pytrain.publish.versions import rollback as do_rollback

    settings: Settings = request.app.state.settings
    version = str(form.get("version") or "")
    if not version.isdigit():
        raise PyTrainError(f"version {version[:20]!r} is not a version number", hint="pick one on the Models page")
    change = await run_in_threadpool(lambda: do_rollback(model, int(version), settings=settings, url=settings.triton_grpc_url))
    return _back(request, "/models", f"model {model}: serving {change.served} (was {change.previous}); {change.message}")
