"""The DCGM exporter stand-in takes dcgm-exporter's `--web-config-file` and lets in only what
the exporter toolkit lets in, so the tests of a locked GPU exporter test the real flow: basic
auth against the bcrypt hash in the run's web config, read again at every request."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from pytest_aifactory import direct_http
from pytest_aifactory.monitor.credentials import USER, render_web_config
from pytest_aifactory.testing import dcgm_exporter


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def web_config(tmp_path: Path) -> Path:
    path = tmp_path / "web-config.yml"
    path.write_text(render_web_config(USER, "the-password"))
    return path


@pytest.fixture
def locked(web_config: Path) -> Iterator[str]:
    """The stand-in's handler, locked with `web_config`, in a server of this process."""
    handler = dcgm_exporter.metrics_handler(lambda: dcgm_exporter.exposition(1, 0.0), web_config)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def status(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    return direct_http.get(url, timeout=5, headers=headers)


def test_only_the_users_password_gets_the_metrics(locked: str) -> None:
    answer = status(f"{locked}/metrics", basic(USER, "the-password"))
    assert answer.status_code == 200
    assert "DCGM_FI_DEV_GPU_UTIL{" in answer.text
    for headers in (
        None,
        basic(USER, "wrong"),
        basic("someone-else", "the-password"),
        {"Authorization": "Bearer the-password"},
        {"Authorization": "Basic not-base64!"},
    ):
        refused = status(f"{locked}/metrics", headers)
        assert refused.status_code == 401, headers
        assert refused.headers["WWW-Authenticate"] == "Basic"
        assert "DCGM_FI_" not in refused.text


def test_authentication_comes_before_the_path(locked: str) -> None:
    """As the toolkit wraps the whole server: another path says 401, not 404, to a stranger."""
    assert status(f"{locked}/other").status_code == 401
    assert status(f"{locked}/other", basic(USER, "the-password")).status_code == 404


def test_the_web_config_is_read_at_every_request(locked: str, web_config: Path) -> None:
    web_config.write_text(render_web_config(USER, "a-new-password"))
    assert status(f"{locked}/metrics", basic(USER, "the-password")).status_code == 401
    assert status(f"{locked}/metrics", basic(USER, "a-new-password")).status_code == 200
    web_config.write_text("basic_auth_users: [not, a, mapping]\n")
    assert status(f"{locked}/metrics", basic(USER, "a-new-password")).status_code == 500
    web_config.write_text("{}\n")  # no users: the toolkit lets everyone in
    assert status(f"{locked}/metrics").status_code == 200


def test_an_unreadable_web_config_stops_it_at_start(tmp_path: Path) -> None:
    started = subprocess.run(
        [
            sys.executable,
            dcgm_exporter.__file__,
            "--address",
            "127.0.0.1:0",
            "--web-config-file",
            str(tmp_path / "missing.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert started.returncode != 0
    assert "invalid web config" in started.stderr
