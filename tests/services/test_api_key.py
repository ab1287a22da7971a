"""The run's API key: servers that take one are locked with it, only its holders get in."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rundir import RunDir, make_run_id, read_client_settings
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.services.base import API_KEY_SETTING
from pytest_aifactory.services.manager import ServiceManager
from tests.factories import recipe

pytestmark = pytest.mark.slow


def keyed_recipe(env: dict[str, str] | None = None) -> Recipe:
    return recipe(name="keyed", service={"args": ["--parallel", "1"], "env": env or {}})


def start(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[RunDir, ServiceManager]:
    run = RunDir.create(tmp_path / "reports", make_run_id("keyed"))
    run.start_heartbeat()  # the service job watches it, as under a session
    return run, ServiceManager(keyed_recipe(env), run, LocalJobExecutor(run))


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[RunDir, Endpoint]]:
    run, services = start(tmp_path)
    try:
        yield run, services.endpoint("llm")
    finally:
        services.stop_all()
        run.stop_heartbeat()


def status(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(url, headers=headers, timeout=10).status_code


@pytest.mark.requires("llama-server")
def test_only_the_runs_key_opens_the_server(keyed: tuple[RunDir, Endpoint]) -> None:
    run, endpoint = keyed
    key = run.api_key()
    assert len(key) >= 32
    assert endpoint.client_env[API_KEY_SETTING] == key
    models = f"{endpoint.url}/v1/models"
    assert status(models) == 401
    assert status(models, "not-the-key") == 401
    assert status(models, key) == 200
    completion = requests.post(
        f"{endpoint.url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30
    )
    assert completion.status_code == 401
    # metrics too: only the run's Prometheus, which sends the key, reads them
    assert status(f"{endpoint.url}/metrics") == 401
    assert status(f"{endpoint.url}/metrics", key) == 200
    assert status(f"{endpoint.url}/health") == 200  # health says nothing worth hiding
    # the key never reaches a command line, where every user of the node can read it
    assert endpoint.job is not None
    for pid in endpoint.job.pids:
        assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # run folder, key and the clients' settings are the owner's alone
    assert stat.S_IMODE(run.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(run.api_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(run.api_key_path.parent.stat().st_mode) == 0o700
    settings = run.client_settings_path("llm")
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert read_client_settings(run.root, "llm") == {API_KEY_SETTING: key}
    assert run.redactor is None or key in run.redactor.secrets


@pytest.mark.requires("llama-server")
def test_a_key_the_recipe_gives_is_used_instead(tmp_path: Path) -> None:
    mine = "recipe-given-key-0123456789abcdef"
    run, services = start(tmp_path, {"LLAMA_API_KEY": mine})
    try:
        endpoint = services.endpoint("llm")
        assert endpoint.client_env[API_KEY_SETTING] == mine
        assert status(f"{endpoint.url}/v1/models", mine) == 200
        assert status(f"{endpoint.url}/v1/models", run.api_key()) == 401
    finally:
        services.stop_all()
        run.stop_heartbeat()


def test_the_key_file_is_made_once_and_shared(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "reports", make_run_id("keyed"))
    first = run.api_key()
    assert RunDir.open(run.root).api_key() == first  # a worker of the run reads the same
    assert os.stat(run.api_key_path).st_size == len(first)


def test_the_kinds_that_take_a_key_say_how() -> None:
    from pytest_aifactory.services.base import get_kind

    # through the environment: a command line is readable by every user of the node
    assert get_kind("llamacpp").api_key_env == "LLAMA_API_KEY"
    assert get_kind("vllm").api_key_env == "VLLM_API_KEY"
    assert get_kind("command").api_key_env is None
