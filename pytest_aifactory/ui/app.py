"""The web application of `aifactory ui`: its routes, each a thin caller of
`pytest_aifactory.api`, so what the page can do the command line can too.

The API reads files, asks Slurm and Prometheus, and waits for sessions to stop: each call runs in
a thread, so one slow answer never holds up the page's other polls.
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from pytest_aifactory import api
from pytest_aifactory.cluster.run_records import SESSION_ROLE, TERMINAL_STATES
from pytest_aifactory.cluster.rundir import not_owned
from pytest_aifactory.ui import pages
from pytest_aifactory.ui.auth import REPORT_CSP, add_security_headers, make_auth_middleware

STATIC_DIR = Path(__file__).resolve().parent / "static"
REPORTS_KEY = web.AppKey("reports_dir", Path)
RECIPES_KEY = web.AppKey("recipes_dir", Path)
TOKEN_KEY = web.AppKey("token", str)
EXECUTORS = ("local", "slurm")
MAX_LOG_BYTES = 1 << 16

T = TypeVar("T")


class Dashboard:
    """Rebuilds the reports folder's `index.html` only when its runs changed since the last
    build: a build reads every run's summary, too slow to repeat at every visit."""

    def __init__(self, reports_dir: Path) -> None:
        self.reports_dir = reports_dir
        self._built_for: tuple[tuple[str, float], ...] | None = None
        self._lock = asyncio.Lock()
        self.error: str | None = None

    def fingerprint(self) -> tuple[tuple[str, float], ...]:
        """The run folders and when each wrote its summary (a session rewrites its job record
        all the time, which changes nothing the dashboard shows)."""
        found: list[tuple[str, float]] = []
        try:
            children = sorted(self.reports_dir.iterdir())
        except OSError:
            return ()
        for child in children:
            try:
                written = (child / "summary.json").stat().st_mtime
            except OSError:
                written = 0.0
            found.append((child.name, written))
        return tuple(found)

    async def refresh(self) -> Path | None:
        """The dashboard's path, rebuilt first when runs changed; None when there is none."""
        async with self._lock:
            if not self.reports_dir.is_dir():
                self.error = f"no reports folder {self.reports_dir} yet: start a session"
                return None
            current = await asyncio.to_thread(self.fingerprint)
            page = self.reports_dir / "index.html"
            if current != self._built_for or not page.is_file():
                try:
                    page = await asyncio.to_thread(api.dashboard, self.reports_dir)
                except (api.ApiError, OSError) as err:
                    self.error = str(err)
                    return None
                self._built_for = current
                self.error = None
            return page


DASHBOARD_KEY = web.AppKey("dashboard", Dashboard)


async def in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(func, *args, **kwargs)


def error_response(err: api.ApiError) -> web.Response:
    """A user's mistake as JSON the page shows as it is."""
    status = 400
    if isinstance(err, api.RunNotFoundError):
        status = 404
    elif isinstance(err, api.NotOwnedError):
        status = 403
    body: dict[str, Any] = {"error": str(err)}
    if isinstance(err, api.InvalidRecipeError):
        body["problems"] = list(err.problems)
    return web.json_response(body, status=status)


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except api.ApiError as err:
        return error_response(err)


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise api.ApiError("the request's body is not JSON") from None
    if not isinstance(body, dict):
        raise api.ApiError("the request's body is not a JSON object")
    return body


def text_field(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise api.ApiError(f"{key} must be text, got {type(value).__name__}")
    return value.strip() or None


def recipe_files(recipes_dir: Path) -> list[str]:
    """The recipes offered in the start form: the folder's own first, then its sub-folders'."""
    if not recipes_dir.is_dir():
        return []
    found = [p for p in recipes_dir.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    ordered = sorted(found, key=lambda p: (len(p.relative_to(recipes_dir).parts), str(p)))
    return [str(p) for p in ordered]


def run_ended(status: api.RunStatus) -> bool:
    """The run is over for its live page: its status says so and the background session's
    process (which records "interrupted" before it has saved everything) is gone too."""
    said = status.summary.status
    going = said in ("submitted", "running") or said.startswith("running,")
    session = any(
        job.role == SESSION_ROLE and job.checked and job.state not in TERMINAL_STATES
        for job in status.jobs
    )
    return not going and not session


def report_url(reports_dir: Path, run_dir: str) -> str | None:
    """Where the interface serves the run's report, when it has one in this reports folder."""
    folder = Path(run_dir)
    try:
        inside = folder.resolve().parent == reports_dir.resolve()
    except OSError:
        return None
    if inside and (folder / "report.html").is_file():
        return f"/reports/{folder.name}/report.html"
    return None


# -- pages ----------------------------------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    app = request.app
    dashboard = app[DASHBOARD_KEY]
    page = await dashboard.refresh()
    recipes = await in_thread(recipe_files, app[RECIPES_KEY])
    html = pages.home_page(
        token=app[TOKEN_KEY],
        recipes=recipes,
        dashboard_url="/reports/index.html" if page is not None else None,
        dashboard_note=dashboard.error,
        reports_dir=str(app[REPORTS_KEY]),
    )
    return web.Response(text=html, content_type="text/html")


async def live_page(request: web.Request) -> web.Response:
    ref = request.match_info["run_id"]
    try:
        status = await in_thread(api.run_status, ref)
    except api.ApiError as err:
        code = error_response(err).status
        return web.Response(text=pages.error_page(str(err)), status=code, content_type="text/html")
    html = pages.live_page(token=request.app[TOKEN_KEY], run_id=status.summary.run_id)
    return web.Response(text=html, content_type="text/html")


async def report_file(request: web.Request) -> web.StreamResponse:
    """A file of the reports folder, sandboxed; only from folders of this account and never
    outside the reports folder (links and `..` resolved first)."""
    root = request.app[REPORTS_KEY].resolve()
    tail = request.match_info["tail"]
    if tail in ("", "index.html"):
        await request.app[DASHBOARD_KEY].refresh()
    target = (root / tail).resolve()
    if not target.is_relative_to(root):
        raise web.HTTPForbidden(text="outside the reports folder: refused")
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        raise web.HTTPNotFound(text=f"no such file in the reports folder: {tail}")
    relative = target.relative_to(root)
    if len(relative.parts) > 1:
        why = not_owned(root / relative.parts[0])
        if why:
            raise web.HTTPForbidden(text=why)
    if target.stat().st_uid != os.geteuid():
        raise web.HTTPForbidden(text=f"{relative} belongs to another account: refused")
    return web.FileResponse(target, headers={"Content-Security-Policy": REPORT_CSP})


# -- JSON -----------------------------------------------------------------------------------------


async def list_runs(request: web.Request) -> web.Response:
    live_only = request.query.get("live", "") in ("1", "true", "yes")
    found = await in_thread(api.runs, live_only=live_only)
    reports = request.app[REPORTS_KEY]
    rows = [
        {**run.to_json(), "report_url": report_url(reports, run.run_dir)} for run in reversed(found)
    ]
    return web.json_response(rows)


async def run_status(request: web.Request) -> web.Response:
    status = await in_thread(api.run_status, request.match_info["run_id"])
    url = report_url(request.app[REPORTS_KEY], status.summary.run_dir)
    return web.json_response({**status.to_json(), "report_url": url, "ended": run_ended(status)})


async def counters(request: web.Request) -> web.Response:
    found = await in_thread(api.live_counters, request.match_info["run_id"])
    return web.json_response(found.to_json())


async def series(request: web.Request) -> web.Response:
    try:
        window_s = float(request.query.get("window", "300"))
    except ValueError:
        raise api.ApiError("window must be a number of seconds") from None
    found = await in_thread(
        api.server_series, request.match_info["run_id"], window_s=max(10.0, min(window_s, 3600))
    )
    return web.json_response(found.to_json())


async def logs(request: web.Request) -> web.Response:
    ref = request.match_info["run_id"]
    path = request.query.get("path")
    if not path:
        files = await in_thread(api.log_files, ref, request.query.get("job") or None)
        return web.json_response([file.to_json() for file in files])
    try:
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        raise api.ApiError("offset must be a whole number of bytes") from None
    chunk = await in_thread(api.read_log, ref, path, max(0, offset), MAX_LOG_BYTES)
    return web.json_response(chunk.to_json())


async def validate_recipe(request: web.Request) -> web.Response:
    body = await read_json(request)
    recipe = text_field(body, "recipe")
    if recipe is None:
        raise api.ApiError("choose a recipe or type the path of one")
    check = await in_thread(api.validate_recipe, recipe)
    return web.json_response(check.to_json())


async def start_session(request: web.Request) -> web.Response:
    body = await read_json(request)
    recipe = text_field(body, "recipe")
    if recipe is None:
        raise api.ApiError("choose a recipe or type the path of one")
    executor = text_field(body, "executor")
    if executor is not None and executor not in EXECUTORS:
        raise api.ApiError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    try:
        pytest_args = shlex.split(text_field(body, "pytest_args") or "")
    except ValueError as err:
        raise api.ApiError(f"extra pytest options: {err}") from None
    started = await in_thread(
        api.start_session,
        recipe,
        pytest_args=pytest_args,
        report_dir=request.app[REPORTS_KEY],
        executor=executor,
        keyword=text_field(body, "keyword"),
    )
    return web.json_response(started.to_json(), status=201)


async def stop_session(request: web.Request) -> web.Response:
    results = await in_thread(api.stop_session, request.match_info["run_id"])
    return web.json_response([result.to_json() for result in results])


async def stop_jobs(request: web.Request) -> web.Response:
    results = await in_thread(api.stop_jobs, request.match_info["run_id"])
    return web.json_response([result.to_json() for result in results])


def make_app(reports_dir: Path | str, recipes_dir: Path | str, token: str) -> web.Application:
    """The interface for one reports folder, answering only requests that carry `token`."""
    app = web.Application(middlewares=[make_auth_middleware(token), api_errors])
    app[REPORTS_KEY] = Path(reports_dir).expanduser().absolute()
    app[RECIPES_KEY] = Path(recipes_dir).expanduser()
    app[TOKEN_KEY] = token
    app[DASHBOARD_KEY] = Dashboard(app[REPORTS_KEY])
    app.on_response_prepare.append(add_security_headers)
    app.router.add_get("/", home)
    app.router.add_get("/runs/{run_id}", live_page)
    app.router.add_get("/reports/{tail:.*}", report_file)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/api/runs", list_runs)
    app.router.add_get("/api/runs/{run_id}", run_status)
    app.router.add_get("/api/runs/{run_id}/counters", counters)
    app.router.add_get("/api/runs/{run_id}/series", series)
    app.router.add_get("/api/runs/{run_id}/logs", logs)
    app.router.add_post("/api/recipes/validate", validate_recipe)
    app.router.add_post("/api/sessions", start_session)
    app.router.add_post("/api/runs/{run_id}/stop-session", stop_session)
    app.router.add_post("/api/runs/{run_id}/stop-jobs", stop_jobs)
    return app
