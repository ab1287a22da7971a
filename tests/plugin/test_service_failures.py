"""A service that cannot start fails the session fast, with its log tail, leaving nothing behind."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Session, processes_matching, run_benchmark, write_recipe

pytestmark = pytest.mark.slow  # each test runs a pytest session or real servers


def recipe_with(service: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "broken-service",
        "services": {"svc": service},
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "svc",
                "load": {"levels": [1, 2], "requests": 2},
            }
        },
        "monitor": {"prometheus": False},
    }


def run(tmp_path: Path, service: dict[str, Any]) -> tuple[Session, float]:
    recipe = write_recipe(tmp_path / "recipe.yaml", recipe_with(service))
    start = time.monotonic()
    session = run_benchmark(tmp_path, recipe, timeout=120)
    return session, time.monotonic() - start


def assert_failed_cleanly(session: Session, marker: str) -> None:
    assert session.returncode == 1, session.output
    assert "Traceback" not in session.stdout
    # both tests fail: the second at once, with the same cause, without a second start
    assert session.stdout.count("service 'svc'") >= 2, session.output
    assert processes_matching(marker) == []


def test_service_that_exits_at_once(tmp_path: Path) -> None:
    marker = f"boom-{uuid.uuid4().hex[:8]}"
    program = f"import sys; print('{marker} cannot load model', file=sys.stderr); sys.exit(3)"
    command = f'python3 -c "{program}"'
    session, elapsed = run(tmp_path, {"kind": "command", "command": command})
    assert_failed_cleanly(session, marker)
    assert "service 'svc' died while" in session.stdout
    assert "exited with code 3" in session.stdout
    assert f"{marker} cannot load model" in session.stdout  # the log tail
    assert elapsed < 60


def test_service_that_never_becomes_healthy(tmp_path: Path) -> None:
    marker = f"{uuid.uuid4().int % 10**6 + 10**6}"
    # listens on nothing: the TCP health check can never pass
    command = (
        f"python3 -c \"import time; print('waiting {marker}', flush=True); time.sleep({marker})\""
    )
    service = {"kind": "command", "command": command, "health_timeout_s": 3}
    session, elapsed = run(tmp_path, service)
    assert_failed_cleanly(session, f"time.sleep({marker})")
    assert "never became healthy" in session.stdout
    assert "within 3 s" in session.stdout
    assert f"waiting {marker}" in session.stdout
    assert elapsed < 60


def test_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        service = {
            "kind": "command",
            "command": "python3 -m http.server {port} --bind {host}",
            "port": port,
        }
        session, _ = run(tmp_path, service)
    assert session.returncode == 1
    assert f"port {port} on 127.0.0.1 is already taken" in session.stdout


def test_missing_executable(tmp_path: Path) -> None:
    service = {"kind": "command", "command": "no-such-server-binary --port {port}"}
    session, elapsed = run(tmp_path, service)
    assert session.returncode == 1
    assert "cannot start no-such-server-binary" in session.stdout
    assert elapsed < 60
