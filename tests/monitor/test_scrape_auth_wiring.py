"""What the run sends each target when no Prometheus binary exists (the direct scraper), and
how a MinIO service is announced: with its token kept for the run's Prometheus."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.monitor.credentials import ensure_credentials, read_token, write_token
from pytest_aifactory.monitor.run_monitor import RunMonitor
from pytest_aifactory.monitor.scraper import DirectScraper
from pytest_aifactory.monitor.series import AUTH_LABEL, KIND_LABEL, SERVICE_LABEL
from pytest_aifactory.monitor.targets import (
    BEARER_AUTH,
    NO_AUTH,
    Target,
    base_labels,
    read_targets,
    write_target,
)
from pytest_aifactory.services.kinds.s3 import ACCESS_KEY_ENV, SECRET_KEY_ENV
from pytest_aifactory.services.manager import ServiceManager
from pytest_aifactory.services.minio_token import LIFETIME_S, prometheus_token
from tests.factories import recipe


@pytest.fixture
def recorder() -> Iterator[tuple[str, dict[str, str | None]]]:
    """A server that answers every path and notes the `Authorization` each path was sent."""
    seen: dict[str, str | None] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen[self.path] = self.headers.get("Authorization")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_direct_scraper_sends_each_target_its_own_credential(
    tmp_path: Path, recorder: tuple[str, dict[str, str | None]]
) -> None:
    address, seen = recorder
    run = RunDir.create(tmp_path / "reports", make_run_id("wired"))
    credentials = ensure_credentials(run.root)
    node = base_labels(run.run_id, "node", "n1")
    write_target(run.root, Target("nodes", "own", address, "/own", node))
    write_target(run.root, Target("nodes", "site", address, "/site", {**node, AUTH_LABEL: NO_AUTH}))
    minio = {
        **base_labels(run.run_id, "service", "n1"),
        SERVICE_LABEL: "store",
        KIND_LABEL: "s3",
        AUTH_LABEL: BEARER_AUTH,
    }
    write_target(run.root, Target("services", "store", address, "/minio", minio))
    write_token(run.root, "store", "the-token")
    DirectScraper(run.root, {}, interval_s=1.0).scrape_once()
    assert seen == {
        "/own": credentials.header["Authorization"],
        "/site": None,
        "/minio": "Bearer the-token",
    }


def endpoint(name: str, served_model: str, keys: dict[str, str]) -> Endpoint:
    return Endpoint(
        name=name,
        kind="s3",
        host="127.0.0.1",
        port=9000,
        url="http://127.0.0.1:9000",
        served_model=served_model,
        metrics_url="http://127.0.0.1:9000/minio/v2/metrics/cluster",
        node="n1",
        client_env=keys,
    )


def test_a_minio_is_announced_with_its_token(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "reports", make_run_id("wired"))
    document = recipe(monitor={"prometheus": True})
    monitor = RunMonitor(
        document.monitor, run, ServiceManager(document, run, LocalJobExecutor(run)), "local"
    )
    monitor.mode = "scrape"  # no scraper: the wait for a first scrape ends at once
    keys = {ACCESS_KEY_ENV: "aifkey", SECRET_KEY_ENV: "the-secret"}
    monitor.service_ready(endpoint("store", "minio", keys))
    monitor.service_ready(endpoint("other", "nanio", keys))
    targets = {t.name: t for t in read_targets(run.root, ("services",))}
    assert targets["store"].labels[AUTH_LABEL] == BEARER_AUTH
    token = read_token(run.root, "store")
    assert token is not None
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert (claims["iss"], claims["sub"]) == ("prometheus", "aifkey")
    made_now = prometheus_token("aifkey", "the-secret", now=claims["exp"] - LIFETIME_S)
    assert token == made_now  # signed with the server's secret key
    assert AUTH_LABEL not in targets["other"].labels
    assert read_token(run.root, "other") is None
