"""The interface's JSON endpoints and pages on a run recorded in a temporary state folder: the
same answers as `pytest_aifactory.api`, logs read by offset, reports linked only when there, and
user mistakes as JSON errors that say what was wrong."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from pytest_aifactory.cluster import run_records
from pytest_aifactory.cluster.run_records import JobRecord, RunRecord, write_run
from pytest_aifactory.ui.app import make_app
from pytest_aifactory.ui.auth import CSRF_HEADER

TOKEN = "another-token-for-the-tests-0123456789abcdef"
AUTH = {"Authorization": f"token {TOKEN}"}
CHANGE = {**AUTH, CSRF_HEADER: TOKEN}
Check = Callable[[TestClient[object, object]], Awaitable[None]]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "state"
    monkeypatch.setenv(run_records.STATE_DIR_ENV, str(folder))
    return folder


def finished_run(reports: Path, log: Path, *, with_report: bool) -> RunRecord:
    """A run that ended, with one finished client job whose stderr is `log`."""
    run_dir = reports / ("20260101-120000-demo" if with_report else "20260101-130000-other")
    run_dir.mkdir(parents=True)
    if with_report:
        (run_dir / "report.html").write_text("<p>report</p>")
    job = JobRecord(
        name="client-chat",
        role="client",
        job_id="7",
        executor="local",
        state="COMPLETED",
        host=socket.gethostname(),
        stdout=str(log.with_suffix(".out")),
        stderr=str(log),
        submitted_at=dt.datetime.now(dt.UTC),
    )
    record = RunRecord(
        run_id=run_dir.name,
        run_dir=str(run_dir),
        recipe="demo",
        executor="local",
        driver_host=socket.gethostname(),
        started_at=dt.datetime.now(dt.UTC),
        ended_at=dt.datetime.now(dt.UTC),
        status="complete",
        jobs=[job],
    )
    write_run(record)
    run_records.update_index(record.run_dir, run_records.index_entry(record))
    return record


def serve(tmp_path: Path, check: Check) -> None:
    app = make_app(tmp_path / "reports", tmp_path / "recipes", TOKEN)

    async def body() -> None:
        async with TestClient(TestServer(app)) as client:
            await check(client)

    asyncio.run(body())


async def json_of(response: Any) -> Any:
    return await response.json()


def test_runs_status_and_pages_of_a_recorded_run(tmp_path: Path, state: Path) -> None:
    log = tmp_path / "client.err"
    log.write_text("")
    run = finished_run(tmp_path / "reports", log, with_report=True)
    other = finished_run(tmp_path / "reports", log, with_report=False)

    async def check(client: TestClient[object, object]) -> None:
        runs = await json_of(await client.get("/api/runs", headers=AUTH))
        by_id = {row["run_id"]: row for row in runs}
        assert set(by_id) == {run.run_id, other.run_id}
        assert by_id[run.run_id]["report_url"] == f"/reports/{run.run_id}/report.html"
        assert by_id[other.run_id]["report_url"] is None
        assert by_id[run.run_id]["status"] == "complete"
        assert await json_of(await client.get("/api/runs?live=1", headers=AUTH)) == []

        status = await json_of(await client.get(f"/api/runs/{run.run_id}", headers=AUTH))
        assert status["summary"]["run_id"] == run.run_id
        assert [job["name"] for job in status["jobs"]] == ["client-chat"]
        assert status["report_url"] == f"/reports/{run.run_id}/report.html"
        assert status["ended"] is True

        page = await client.get(f"/runs/{run.run_id}", headers=AUTH)
        assert page.status == 200
        assert f'data-run-id="{run.run_id}"' in await page.text()

        counters = await json_of(await client.get(f"/api/runs/{run.run_id}/counters", headers=AUTH))
        assert counters["rows"] == []
        series = await json_of(await client.get(f"/api/runs/{run.run_id}/series", headers=AUTH))
        assert series["series"] == []
        assert series["note"]

    serve(tmp_path, check)


def test_logs_are_listed_and_read_in_whole_lines_from_an_offset(
    tmp_path: Path, state: Path
) -> None:
    log = tmp_path / "client.err"
    log.write_text("first line\nsecond line\nhalf a li")
    run = finished_run(tmp_path / "reports", log, with_report=False)
    base = f"/api/runs/{run.run_id}/logs"

    async def check(client: TestClient[object, object]) -> None:
        files = await json_of(await client.get(base, headers=AUTH))
        assert str(log) in [file["path"] for file in files]
        chunk = await json_of(await client.get(base, params={"path": str(log)}, headers=AUTH))
        assert chunk["text"] == "first line\nsecond line\n"
        with log.open("a") as out:
            out.write("ne\n")
        more = await json_of(
            await client.get(
                base,
                params={"path": str(log), "offset": str(chunk["next_offset"])},
                headers=AUTH,
            )
        )
        assert more["text"] == "half a line\n"
        # a file that is not one of the run's logs is refused, whatever it is
        refused = await client.get(base, params={"path": "/etc/passwd"}, headers=AUTH)
        assert refused.status == 400
        assert "root:" not in await refused.text()
        bad_offset = await client.get(base, params={"path": str(log), "offset": "x"}, headers=AUTH)
        assert bad_offset.status == 400
        assert "offset" in (await bad_offset.json())["error"]

    serve(tmp_path, check)


def test_an_invalid_recipe_is_answered_with_every_problem(tmp_path: Path, state: Path) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(yaml.safe_dump({"name": "broken", "services": {"s": {"kind": "nope"}}}))

    async def check(client: TestClient[object, object]) -> None:
        for path in ("/api/recipes/validate", "/api/sessions"):
            response = await client.post(path, json={"recipe": str(recipe)}, headers=CHANGE)
            assert response.status == 400, path
            body = await response.json()
            assert str(recipe) in body["error"]
            assert any("services.s.kind" in problem for problem in body["problems"]), body
        assert not (tmp_path / "reports").exists()  # nothing was started

    serve(tmp_path, check)


def test_start_form_mistakes_are_named(tmp_path: Path, state: Path) -> None:
    async def check(client: TestClient[object, object]) -> None:
        cases = [
            ({}, "choose a recipe"),
            ({"recipe": "r.yaml", "executor": "cloud"}, "executor must be one of local, slurm"),
            ({"recipe": "r.yaml", "pytest_args": "-k 'open"}, "extra pytest options"),
            ({"recipe": 3}, "recipe must be text"),
        ]
        for body, message in cases:
            response = await client.post("/api/sessions", json=body, headers=CHANGE)
            assert response.status == 400, body
            assert message in (await response.json())["error"]
        not_json = await client.post("/api/sessions", data="recipe=x", headers=CHANGE)
        assert not_json.status == 400
        assert "JSON" in (await not_json.json())["error"]

    serve(tmp_path, check)


def test_the_home_page_offers_the_recipes_folder_and_says_when_there_is_no_dashboard(
    tmp_path: Path, state: Path
) -> None:
    recipes = tmp_path / "recipes"
    (recipes / "site").mkdir(parents=True)
    for name in ("site/b.yaml", "z.yaml", "a.yml", "notes.txt"):
        (recipes / name).write_text("name: x\n")

    async def check(client: TestClient[object, object]) -> None:
        page = await client.get("/", headers=AUTH)
        assert page.status == 200
        html = await page.text()
        offered = [p for p in re.findall(r'<option value="([^"]+)">', html) if "/" in p]
        assert offered == [
            str(recipes / "a.yml"),
            str(recipes / "z.yaml"),
            str(recipes / "site" / "b.yaml"),
        ]
        assert f"no reports folder {tmp_path / 'reports'}" in html
        assert 'id="dashboard-link"' not in html

    serve(tmp_path, check)
