"""A multi-node vLLM service's Ray cluster, with real Ray: locked with the run's token, and
stopped by its own processes only.

The head is started by `vllm_head` exactly as a service job starts it (the stand-in server in
place of vLLM). Ray (2.52 or later: token authentication) comes from scripts/install-ray.sh,
for the system's python3 in a folder every account can read, because the other account runs
that same Ray; `AIFACTORY_TEST_RAY` names another `ray` command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_aifactory.cluster.rendezvous import free_port_block
from pytest_aifactory.services.kinds import vllm_head
from pytest_aifactory.testing.other_user import OtherUser
from tests.components import missing_component
from tests.helpers import wait_for

RAY_ENV = "AIFACTORY_TEST_RAY"
RAY_INSTALLED = "/opt/aifactory-ray/bin/ray"
KEY = "the-runs-key-6d1f0c1e2b3a49e8a7c1"
SERVER = """\
import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text("up")
while True:
    time.sleep(0.1)
"""


def ray_command() -> str:
    found = os.environ.get(RAY_ENV) or RAY_INSTALLED
    if not os.access(found, os.X_OK):
        missing_component("ray", f"no Ray at {found}")
    proc = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
    version = vllm_head.ray_version(proc.stdout)
    if version is None or version < vllm_head.TOKEN_AUTH_SINCE:
        missing_component("ray", f"{found} is not Ray 2.52 or later (no token authentication)")
    return found


def processes_naming(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def test_the_cluster_token_is_the_services_own_or_its_api_key() -> None:
    env = vllm_head.ray_auth_env({"VLLM_API_KEY": KEY, "RAY_AUTH_TOKEN_PATH": "/home/x/token"})
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == KEY
    assert "RAY_AUTH_TOKEN_PATH" not in env  # a file Ray would prefer is not the run's
    given = vllm_head.ray_auth_env({"VLLM_API_KEY": KEY, "RAY_AUTH_TOKEN": "own-token"})
    assert given["RAY_AUTH_TOKEN"] == "own-token"


FAKE_RAY = """\
#!/bin/sh
if [ "$1" = --version ]; then echo "ray, version $FAKE_RAY_VERSION"; exit 0; fi
echo "$@" >> "$FAKE_RAY_CALLS"
"""


@pytest.mark.parametrize(
    ("version", "key", "words"),
    [
        ("2.51.1", KEY, "is Ray 2.51: Ray 2.52 or later is needed"),
        ("2.60.0", "", "no token for the Ray cluster: set RAY_AUTH_TOKEN or VLLM_API_KEY"),
    ],
)
def test_no_open_cluster_is_started(tmp_path: Path, version: str, key: str, words: str) -> None:
    """A Ray without token authentication, or nothing to lock the cluster with: the launcher
    stops before `ray start`, saying why."""
    ray = tmp_path / "ray"
    ray.write_text(FAKE_RAY)
    ray.chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "FAKE_RAY_VERSION": version, "FAKE_RAY_CALLS": str(calls)}
    for name in ("VLLM_API_KEY", "RAY_AUTH_TOKEN"):
        env.pop(name, None)
    if key:
        env["VLLM_API_KEY"] = key
    argv = [sys.executable, "-m", vllm_head.__name__, "--ray", str(ray), "--ray-port", "41000"]
    argv += ["--node-ip", "127.0.0.1", "--", "true"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert not calls.exists()


@pytest.fixture
def head(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A Ray head as a multi-node vLLM service's rank 0 runs it; stopped by the test."""
    ray = ray_command()
    api_port = free_port_block("127.0.0.1", 2)
    marker = tmp_path / "server-up"
    env = {**os.environ, "VLLM_API_KEY": KEY}
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(name, None)
    argv = [
        sys.executable,
        "-m",
        vllm_head.__name__,
        "--ray",
        ray,
        "--ray-port",
        str(api_port),
        "--ray-port-offset",
        "1",
        "--node-ip",
        "127.0.0.1",
        "--expect-nodes",
        "1",
        "--timeout",
        "120",
        "--poll-s",
        "0.5",
        "--",
        sys.executable,
        "-c",
        SERVER,
        str(marker),
    ]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the Ray head")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield proc, api_port + 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_the_ray_head_refuses_another_user_without_the_token_and_stops_only_its_own(
    head: tuple[subprocess.Popen[str], int], other_user: OtherUser
) -> None:
    proc, ray_port = head
    ray = ray_command()
    address = f"127.0.0.1:{ray_port}"
    assert ray_port != 6379
    # the run itself, with the token, is let in
    ours = subprocess.run(
        [ray, "status", "--address", address],
        env={**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": KEY},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ours.returncode == 0, ours.stderr
    # another account on the node: without the token, and with a guessed one
    for guess in ([], ["RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=guess-0123456789"]):
        theirs = other_user.run(
            ["env", *guess, ray, "status", "--address", address], timeout_s=60, cwd="/tmp"
        )
        assert theirs.returncode != 0
        assert "Authentication" in theirs.stdout + theirs.stderr, theirs.stderr[-2000:]
    # stopping the head ends its Ray processes and leaves another Ray-looking process be
    own = [p for p in processes_naming("aifactory-ray-") if p != proc.pid]
    assert own, "the head's Ray processes name its temporary folder"
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "ray", "gcs_server"]
    )
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        wait_for(lambda: not any(map(vllm_head.is_running, own)), 30, "Ray to stop")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
