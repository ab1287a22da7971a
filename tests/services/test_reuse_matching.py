"""`--reuse-services` reuses a kept service only when the recipe asks for that very server.

A first session keeps a llama.cpp server. A second one whose recipe gives the server other
`args` must start its own and say that `args` differ (on the terminal and in the run's service
summary); a third, with the recipe as the first had it, reuses the kept server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.cluster.run_records import STATE_DIR_ENV
from tests.helpers import Session, processes_matching, run_benchmark, write_recipe

pytestmark = [pytest.mark.slow, pytest.mark.requires("llama-server")]


def llm_recipe(parallel: int) -> dict[str, Any]:
    return {
        "name": "reuse-match",
        "services": {
            "llm": {
                "kind": "llamacpp",
                "model": "smollm2-135m",
                "args": ["--parallel", str(parallel)],
                "health_timeout_s": 120,
            }
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "llm",
                "dataset": {"input_tokens": 16, "output_tokens": 4},
                "load": {"levels": [1], "requests": 2},
            }
        },
        "monitor": {"prometheus": False},
    }


def session(tmp_path: Path, name: str, parallel: int, *args: str) -> tuple[Session, Path]:
    folder = tmp_path / name
    folder.mkdir()
    recipe = write_recipe(folder / "recipe.yaml", llm_recipe(parallel))
    done = run_benchmark(folder, recipe, *args, timeout=300)
    assert done.returncode == 0, done.output
    (run,) = done.run_dirs()
    return done, run


def service_jobs(run: Path) -> list[dict[str, Any]]:
    jobs = json.loads((run / "jobs.json").read_text())["jobs"]
    return [job for job in jobs if job["role"] == "service"]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_changed_args_start_a_new_server_and_the_same_recipe_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a run index of this test's own: `aifactory stop --all` below stops only its runs
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    server_pids: list[int] = []
    try:
        # -s: the kept service must not hold the session's stdout, or it would never end
        _, first = session(tmp_path, "first", 2, "--keep-services", "-s")
        (kept,) = service_jobs(first)
        assert kept["kept"] is True
        server_pids = [p["pid"] for p in kept["pids"] if p["role"] == "server"]
        assert server_pids
        assert all(running(pid) for pid in server_pids)
        assert set(kept["service"]["plan"]["fields"]) >= {"kind", "model", "args", "executor"}
        endpoint = kept["endpoint"]

        changed, second = session(tmp_path, "second", 4, "--reuse-services")
        assert (
            f"llm: not reused (0.0 s) run {first.name} kept one whose plan differs in args: "
            "starting a new one"
        ) in changed.stdout
        (started,) = service_jobs(second)
        assert started["endpoint"] != endpoint
        services = json.loads((second / "summary.json").read_text())["services"]
        assert "differs in args" in services["llm"]["not_reused"]
        assert "reused_from" not in services["llm"]

        same, third = session(tmp_path, "third", 2, "--reuse-services")
        assert f"llm: reused (0.0 s) {endpoint} kept by run {first.name}" in same.stdout
        assert service_jobs(third) == []
        services = json.loads((third / "summary.json").read_text())["services"]
        assert services["llm"]["reused_from"] == first.name
        assert "not_reused" not in services["llm"]
        assert all(running(pid) for pid in server_pids)
    finally:
        main(["stop", "--all"])
    assert not any(running(pid) for pid in server_pids)
    assert processes_matching(str(tmp_path)) == []
