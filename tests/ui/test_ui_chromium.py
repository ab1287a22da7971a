"""`aifactory ui` as a user meets it: the real command in a process group of its own, driven by
Debian's Chromium through Playwright. A llama.cpp session started from the form and followed
on its live page while its counters and charts grow, until its report opens; a session of a
fake OpenAI server stopped from its page, leaving no process; a browser without the token
refused.

Needs /usr/bin/chromium (`make test` installs it) and, for the llama.cpp session, the
llama-server build and the SmolLM2 model (`make setup`).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from pytest_aifactory import api
from pytest_aifactory.cluster.run_records import TERMINAL_STATES
from tests.helpers import REPO, processes_matching, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("chromium", "playwright")]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = REPO / "docs" / "images" / "live.png"
NOT_ENDED = {"submitted", "running"}


def llama_recipe() -> dict[str, Any]:
    """SmolLM2 on llama.cpp with enough requests for about half a minute of load on 2 cores."""
    return {
        "name": "ui-smollm2",
        "services": {
            "llm": {
                "kind": "llamacpp",
                "model": "smollm2-135m",
                "args": ["--parallel", "2"],
                "health_timeout_s": 120,
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "dataset": {"kind": "random", "input_tokens": 32, "output_tokens": 48},
                "load": {"mode": "concurrency", "levels": [2], "requests": 48},
            }
        },
    }


def fake_recipe(marker: str) -> dict[str, Any]:
    """The fake OpenAI server (cheap to start) with far more requests than the test waits for."""
    command = (
        f"{sys.executable} -m pytest_aifactory.testing.dying_server "
        "--host {host} --port {port} "
        f"--die-after-requests 1000000 --marker {marker}"
    )
    return {
        "name": "ui-fake",
        "services": {"svc": {"kind": "command", "command": command, "health_timeout_s": 60}},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "svc",
                "dataset": {"input_tokens": 8, "output_tokens": 4},
                "load": {"mode": "rate", "levels": [5], "requests": 100000},
            }
        },
        "monitor": {"prometheus": False},
    }


@dataclass
class RunningUi:
    url: str
    """As printed: with the token."""
    base: str
    workdir: Path
    reports: Path
    recipes: Path
    process: subprocess.Popen[str]


def read_url(process: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The URL line the command prints. A thread keeps reading its output, so the pipe never
    fills while the interface runs."""
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def drain(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, args=(process.stdout,), daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if "?token=" in line:
            return line.strip()
    raise AssertionError(f"aifactory ui printed no URL: {''.join(seen)!r}")


def start_ui(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_aifactory.cli",
            "ui",
            "--reports",
            str(workdir / "reports"),
            "--recipes",
            str(workdir / "recipes"),
            "--no-browser",
        ],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "AIFACTORY_BENCHMARK_STORAGE": str(workdir / ".benchmarks")},
        start_new_session=True,
    )
    try:
        return process, read_url(process)
    except BaseException:
        stop_ui(process)
        raise


def stop_ui(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUi]:
    workdir = tmp_path_factory.mktemp("ui")
    (workdir / "recipes").mkdir()
    (workdir / "reports").mkdir()
    process, url = start_ui(workdir)
    try:
        base = url.split("/?token=")[0]
        yield RunningUi(url, base, workdir, workdir / "reports", workdir / "recipes", process)
    finally:
        stop_ui(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # deferred: Playwright is a development tool, imported only by the browser tests
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Console:
    """The page's console errors and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def counter_total(page: Any, field: str) -> float:
    cells = page.locator(f"#counters td.{field}").all_inner_texts()
    return sum(float(text.replace(",", "") or 0) for text in cells)


def chart_points(page: Any, field: str) -> int:
    return int(page.get_attribute(f"#chart-{field}", "data-points") or 0)


def start_from_form(page: Any, ui: RunningUi, recipe: Path, name: str) -> str:
    """Chooses the recipe in the form, validates it, starts it; the run id from the live page."""
    page.goto(ui.url)
    assert "token=" not in page.url  # the token left the address bar for a cookie
    page.select_option("#recipe-choice", value=str(recipe))
    page.click("#validate")
    page.wait_for_selector("#check-ok", timeout=15_000)
    assert name in page.inner_text("#check-ok")
    page.fill("#pytest-args", "-p no:cacheprovider")
    page.click("#start")
    page.wait_for_url("**/runs/**", timeout=30_000)
    run_id = page.inner_text("#run-id")
    assert run_id.endswith(name) or name in run_id
    return run_id


def wait_counter_above(page: Any, value: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        total = counter_total(page, "completed")
        if total > value:
            return total
        page.wait_for_timeout(250)
    raise AssertionError(f"the completed counter stayed at {value} for {timeout_s:g} s")


@pytest.mark.requires("llama-server", "smollm2")
def test_a_llamacpp_session_started_from_the_page_is_followed_live_to_its_report(
    ui: RunningUi, browser: Any
) -> None:
    recipe = write_recipe(ui.recipes / "ui-smollm2.yaml", llama_recipe())
    page = browser.new_page(viewport={"width": 1300, "height": 1500})
    console = Console(page)
    try:
        run_id = start_from_form(page, ui, recipe, "ui-smollm2")
        first = wait_counter_above(page, 0, timeout_s=90)
        points = chart_points(page, "completed")
        page.wait_for_timeout(3000)
        later = counter_total(page, "completed")
        assert later > first, "the completed counter did not rise while the run went on"
        assert chart_points(page, "completed") > points
        assert chart_points(page, "output_tokens") > 0
        assert page.locator("#log").inner_text().strip(), "no log line shown"
        if os.environ.get("AIFACTORY_SCREENSHOTS") == "1":
            page.wait_for_timeout(8000)  # longer lines for the README's picture
            page.screenshot(path=str(SCREENSHOT), full_page=True)

        page.wait_for_selector("#run-ended", state="visible", timeout=180_000)
        page.wait_for_selector("#report-link", state="visible", timeout=30_000)
        status = api.run_status(run_id)
        run_dir = Path(status.summary.run_dir)
        assert (run_dir / "summary.json").is_file()
        assert (run_dir / "report.html").is_file()
        final = counter_total(page, "completed")
        assert final >= later
        assert console.errors == []

        with page.expect_navigation():
            page.click("#report-link")
        assert page.url.endswith(f"/reports/{run_dir.name}/report.html")
        assert run_id in page.content()
    finally:
        page.close()


def test_stop_session_on_the_live_page_stops_every_process_and_saves_the_run(
    ui: RunningUi, browser: Any
) -> None:
    marker = f"ui-fake-{uuid.uuid4().hex[:8]}"
    recipe = write_recipe(ui.recipes / "ui-fake.yaml", fake_recipe(marker))
    page = browser.new_page()
    console = Console(page)
    try:
        run_id = start_from_form(page, ui, recipe, "ui-fake")
        wait_counter_above(page, 2, timeout_s=60)
        assert processes_matching(marker), "the fake server is not running"
        page.click("#stop-session")
        page.wait_for_selector("#run-ended", state="visible", timeout=150_000)
        assert console.errors == []
    finally:
        page.close()

    status = api.run_status(run_id)
    assert status.summary.recorded_status in ("stopped", "interrupted"), status.summary
    assert not [j for j in status.jobs if j.checked and j.state not in TERMINAL_STATES]
    assert processes_matching(marker) == []
    assert processes_matching(str(recipe)) == []
    run_dir = Path(status.summary.run_dir)
    assert (run_dir / "summary.json").is_file(), "what the session measured was not saved"


def test_the_form_lists_every_problem_of_an_invalid_recipe(ui: RunningUi, browser: Any) -> None:
    broken = ui.workdir / "broken.yaml"
    broken.write_text("name: broken\nservices:\n  s: {kind: nope}\nclients: {}\n")
    page = browser.new_page()
    console = Console(page)
    try:
        page.goto(ui.url)
        page.fill("#recipe-path", str(broken))
        page.click("#validate")
        page.wait_for_selector("#check-error", timeout=15_000)
        assert str(broken) in page.inner_text("#check-error")
        problems = page.locator(".problems li").all_inner_texts()
        assert any("services.s.kind" in problem for problem in problems), problems
        page.click("#start")
        page.wait_for_selector("#check-error", timeout=15_000)
        assert "/runs/" not in page.url
        assert console.errors == [] or all("400" in error for error in console.errors)
    finally:
        page.close()


def test_a_browser_without_the_token_is_refused(ui: RunningUi, browser: Any) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"{ui.base}/")
        assert response is not None
        assert response.status == 403
        assert "Open the URL" in page.inner_text("body")
        response = page.goto(f"{ui.base}/api/runs")
        assert response is not None
        assert response.status == 403
    finally:
        context.close()


def test_the_runtime_file_lives_as_long_as_the_interface(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    process, url = start_ui(tmp_path)
    try:
        port = int(url.split(":")[2].split("/")[0])
        state = Path(os.environ["AIFACTORY_STATE_DIR"])
        runtime = state / "ui" / f"ui-{port}.json"
        assert runtime.is_file()
        assert runtime.stat().st_mode & 0o777 == 0o600
        assert url in runtime.read_text()
    finally:
        stop_ui(process)
    assert process.returncode == 0
    assert not runtime.exists()
