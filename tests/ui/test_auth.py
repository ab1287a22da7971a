"""Who `aifactory ui` answers: only requests carrying its token, addressed to the loopback name
and port, with the CSRF header for changes; reports only from this account's run folders and
never from outside the reports folder. Driven through aiohttp's own test server and client (a
real socket on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from pytest_aifactory.cli import main
from pytest_aifactory.cli_ui import runtime_file, write_runtime_file
from pytest_aifactory.ui.app import make_app
from pytest_aifactory.ui.auth import CSRF_HEADER, cookie_name, reports_cookie_name, reports_token

TOKEN = "t0ken-for-the-tests-only-1234567890abcdef"
Check = Callable[[TestClient[object, object]], Awaitable[None]]


@pytest.fixture(autouse=True)
def own_run_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty run index: the runs other tests recorded are not these tests' business."""
    monkeypatch.setenv("AIFACTORY_STATE_DIR", str(tmp_path / "state"))


def serve(tmp_path: Path, check: Check, reports: Path | None = None) -> None:
    """Runs `check` against the interface of `reports` (by default a folder not made yet: the
    home page then skips building a dashboard)."""
    app = make_app(reports or tmp_path / "no-reports", tmp_path / "recipes", TOKEN)

    async def body() -> None:
        async with TestClient(TestServer(app)) as client:
            await check(client)

    asyncio.run(body())


def host_of(client: TestClient[object, object]) -> str:
    return f"127.0.0.1:{client.server.port}"


def test_a_request_without_the_token_is_refused(tmp_path: Path) -> None:
    async def check(client: TestClient[object, object]) -> None:
        for path in ("/", "/api/runs", "/static/live.js", "/reports/index.html"):
            response = await client.get(path, allow_redirects=False)
            assert response.status == 403, path
            text = await response.text()
            assert "Open the URL" in text
            assert TOKEN not in text
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Referrer-Policy"] == "no-referrer"

    serve(tmp_path, check)


def test_a_wrong_token_is_refused_wherever_it_is(tmp_path: Path) -> None:
    wrong = TOKEN[:-1] + "X"

    async def check(client: TestClient[object, object]) -> None:
        response = await client.get(f"/?token={wrong}", allow_redirects=False)
        assert response.status == 403
        assert "Set-Cookie" not in response.headers
        response = await client.get("/api/runs", headers={"Authorization": f"token {wrong}"})
        assert response.status == 403
        client.session.cookie_jar.update_cookies({cookie_name(client.server.port or 0): wrong})
        assert (await client.get("/api/runs")).status == 403

    serve(tmp_path, check)


def test_the_token_in_the_url_becomes_a_strict_cookie_and_leaves_the_address(
    tmp_path: Path,
) -> None:
    async def check(client: TestClient[object, object]) -> None:
        response = await client.get(f"/runs/x?token={TOKEN}&a=1", allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == "/runs/x?a=1"
        cookie = response.headers["Set-Cookie"]
        assert cookie.startswith(f"{cookie_name(client.server.port or 0)}={TOKEN}")
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/"):
            assert attribute.lower() in cookie.lower(), cookie
        # the cookie alone now opens the pages, whose scripts get the token from a <meta>
        page = await client.get("/")
        assert page.status == 200
        html = await page.text()
        assert f'<meta name="aifactory-token" content="{TOKEN}">' in html
        assert "<script>" not in html  # scripts come from files only, as the policy demands
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert (await client.get("/static/live.js")).status == 200
        assert await (await client.get("/api/runs")).json() == []

    serve(tmp_path, check)


def test_scripts_may_send_the_token_in_a_header(tmp_path: Path) -> None:
    async def check(client: TestClient[object, object]) -> None:
        response = await client.get("/api/runs", headers={"Authorization": f"token {TOKEN}"})
        assert response.status == 200
        assert await response.json() == []

    serve(tmp_path, check)


def test_a_foreign_host_name_is_refused_even_with_the_token(tmp_path: Path) -> None:
    """DNS rebinding: a page from evil.example whose name now points at 127.0.0.1."""

    async def check(client: TestClient[object, object]) -> None:
        port = client.server.port
        for host in (f"evil.example:{port}", f"127.0.0.1:{(port or 0) + 1}", "127.0.0.1"):
            response = await client.get(
                "/api/runs", headers={"Host": host, "Authorization": f"token {TOKEN}"}
            )
            assert response.status == 403, host
        response = await client.get(
            "/api/runs", headers={"Host": f"localhost:{port}", "Authorization": f"token {TOKEN}"}
        )
        assert response.status == 200

    serve(tmp_path, check)


def test_a_change_needs_the_csrf_header(tmp_path: Path) -> None:
    async def check(client: TestClient[object, object]) -> None:
        await client.get(f"/?token={TOKEN}", allow_redirects=False)  # the cookie, as a browser
        body = {"recipe": str(tmp_path / "missing.yaml")}
        for path in ("/api/recipes/validate", "/api/sessions", "/api/runs/x/stop-session"):
            refused = await client.post(path, json=body)
            assert refused.status == 403, path
        # a token in the URL does not stand for the header either
        refused = await client.post(f"/api/sessions?token={TOKEN}", json=body)
        assert refused.status == 403
        answered = await client.post(
            "/api/recipes/validate", json=body, headers={CSRF_HEADER: TOKEN}
        )
        assert answered.status == 400
        assert "missing.yaml" in (await answered.json())["error"]

    serve(tmp_path, check)


def test_reports_are_sandboxed_and_never_served_from_outside_the_folder(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    run = reports / "20260101-000000-demo"
    run.mkdir(parents=True)
    (run / "report.html").write_text("<p>the report</p>")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    (run / "link.txt").symlink_to(secret)

    async def check(client: TestClient[object, object]) -> None:
        auth = {"Authorization": f"token {TOKEN}"}
        report = await client.get(f"/reports/{run.name}/report.html", headers=auth)
        assert report.status == 200
        assert await report.text() == "<p>the report</p>"
        assert report.headers["Content-Security-Policy"] == "sandbox allow-scripts"
        for path in (
            "/reports/..%2Fsecret.txt",
            f"/reports/{run.name}/..%2F..%2Fsecret.txt",
            "/reports/%2E%2E/secret.txt",
            f"/reports/{run.name}/link.txt",
        ):
            response = await client.get(path, headers=auth)
            assert response.status in (403, 404), path
            assert "not for the browser" not in await response.text()
        missing = await client.get(f"/reports/{run.name}/nothing.html", headers=auth)
        assert missing.status == 404

    serve(tmp_path, check, reports)


def test_the_reports_cookie_opens_reports_and_nothing_else(tmp_path: Path) -> None:
    """A report linked from the sandboxed dashboard is requested from an opaque origin, which
    sends no Strict cookie; the Lax reports cookie serves it, and grants nothing more."""
    reports = tmp_path / "reports"
    run = reports / "20260101-000000-demo"
    run.mkdir(parents=True)
    (run / "report.html").write_text("<p>the report</p>")

    async def check(client: TestClient[object, object]) -> None:
        response = await client.get(f"/?token={TOKEN}", allow_redirects=False)
        cookies = response.headers.getall("Set-Cookie")
        port = client.server.port or 0
        (lax,) = [c for c in cookies if c.startswith(reports_cookie_name(port))]
        assert "samesite=lax" in lax.lower()
        assert "path=/reports/" in lax.lower()
        assert TOKEN not in lax
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies({reports_cookie_name(port): reports_token(TOKEN)})
        report = await client.get(f"/reports/{run.name}/report.html")
        assert report.status == 200
        assert report.headers["Content-Security-Policy"] == "sandbox allow-scripts"
        for path in (
            "/",
            "/api/runs",
            f"/runs/{run.name}",
            "/reports/../api/runs",
            "/reports/..%2Fapi%2Fruns",
            "/reports/%2E%2E/api/runs",
        ):
            response = await client.get(path, allow_redirects=False)
            assert response.status in (403, 404), path
            assert "[]" not in await response.text(), path
        changed = await client.post("/api/recipes/validate", json={"recipe": "x.yaml"})
        assert changed.status == 403

    serve(tmp_path, check, reports)


@pytest.mark.requires("other-user")
def test_a_report_in_another_accounts_run_folder_is_refused(tmp_path: Path) -> None:
    """A planted folder (owned by another uid) in the reports folder: its report is not served,
    even sandboxed."""
    reports = tmp_path / "reports"
    planted = reports / "20260101-000000-planted"
    planted.mkdir(parents=True)
    (planted / "report.html").write_text("<p>planted</p>")
    os.chown(planted, 65534, 65534)

    async def check(client: TestClient[object, object]) -> None:
        response = await client.get(
            f"/reports/{planted.name}/report.html", headers={"Authorization": f"token {TOKEN}"}
        )
        assert response.status == 403
        text = await response.text()
        assert "<p>planted</p>" not in text
        assert "refused" in text

    serve(tmp_path, check, reports)


def test_an_unknown_run_gets_a_page_saying_so(tmp_path: Path) -> None:
    async def check(client: TestClient[object, object]) -> None:
        auth = {"Authorization": f"token {TOKEN}"}
        page = await client.get("/runs/no-such-run", headers=auth)
        assert page.status == 404
        assert "no-such-run" in await page.text()
        api = await client.get("/api/runs/no-such-run/counters", headers=auth)
        assert api.status == 404
        assert "no-such-run" in (await api.json())["error"]

    serve(tmp_path, check)


def test_the_runtime_file_is_the_users_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIFACTORY_STATE_DIR", str(tmp_path / "state"))
    path = write_runtime_file(8123, f"http://127.0.0.1:8123/?token={TOKEN}", TOKEN)
    assert path == runtime_file(8123) == tmp_path / "state" / "ui" / "ui-8123.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert TOKEN in path.read_text()


def test_a_host_other_than_loopback_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("0.0.0.0", "::", "login01.example.org"):
        assert main(["ui", "--host", host, "--no-browser"]) == 2
        err = capsys.readouterr().err
        assert f"--host {host}" in err
        assert "127.0.0.1" in err
        assert "Traceback" not in err


def test_a_port_in_use_is_said_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--port", str(port), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
