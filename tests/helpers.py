"""Running the benchmark suite as a user would: pytest in a subprocess, on a recipe file."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / "benchmarks" / "test_inference.py"
ARTIFACTS = Path(os.environ.get("AIFACTORY_TEST_ARTIFACTS") or REPO / "test-artifacts")
"""Files a test keeps for people to look at after the run (screenshots), outside pytest's
rotating temporary folders."""


def keep_artifact(path: Path, name: str) -> Path:
    """A copy of `path` as `ARTIFACTS/name`, replacing an older one."""
    import shutil

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / name
    shutil.copyfile(path, kept)
    return kept


@dataclass
class Session:
    returncode: int
    stdout: str
    stderr: str
    report_dir: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def run_dirs(self) -> list[Path]:
        if not self.report_dir.exists():
            return []
        return sorted(p for p in self.report_dir.iterdir() if p.is_dir())

    def summary(self) -> dict[str, Any]:
        (run,) = self.run_dirs()
        return json.loads((run / "summary.json").read_text())

    def verdicts(self) -> tuple[set[str], list[str]]:
        """The test names pytest's `-rA` summary lists as passed and as failed (whatever the
        terminal's width adds after them)."""

        def name(line: str) -> str:
            return line.rsplit("::", 1)[-1].split(" - ", 1)[0]

        lines = self.output.splitlines()
        passed = {name(line) for line in lines if line.startswith("PASSED")}
        return passed, [name(line) for line in lines if line.startswith("FAILED")]


def write_recipe(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def benchmark_command(
    recipe: Path, report_dir: Path, *args: str, benchmark: Path = BENCHMARK
) -> list[str]:
    """The benchmark suite on `recipe`, as a user would type it."""
    return [
        sys.executable,
        "-m",
        "pytest",
        str(benchmark),
        "--recipe",
        str(recipe),
        "--report-dir",
        str(report_dir),
        "-p",
        "no:cacheprovider",
        *args,
    ]


def benchmark_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """Keeps the pytest-benchmark files of a test's run inside its temporary folder."""
    return {
        **os.environ,
        "AIFACTORY_BENCHMARK_STORAGE": str(tmp_path / ".benchmarks"),
        **(env or {}),
    }


def run_benchmark(
    tmp_path: Path,
    recipe: Path,
    *args: str,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    benchmark: Path = BENCHMARK,
) -> Session:
    """Run a benchmark module (default: the LLM serving one) on `recipe` in a subprocess."""
    report_dir = tmp_path / "reports"
    proc = subprocess.run(
        benchmark_command(recipe, report_dir, *args, benchmark=benchmark),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=benchmark_env(tmp_path, env),
        check=False,
    )
    return Session(proc.returncode, proc.stdout, proc.stderr, report_dir)


def start_benchmark(tmp_path: Path, recipe: Path, *args: str) -> subprocess.Popen[str]:
    """The benchmark suite on `recipe`, running in the background (to signal or kill it)."""
    return subprocess.Popen(
        benchmark_command(recipe, tmp_path / "reports", *args),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=benchmark_env(tmp_path),
    )


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    poll_s: float = 0.1,
) -> Any:
    """The predicate's first truthy value; an AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(poll_s)


def processes_matching(marker: str) -> list[str]:
    """Command lines of live processes containing `marker` (to prove nothing was left)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if marker in cmdline and proc.pid != os.getpid():
            found.append(f"{proc.pid}: {cmdline}")
    return found


def answers(url: str) -> bool:
    """The URL answers 200 (a server under test is up)."""
    import requests

    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def running_server(
    argv: Callable[[str], list[str]], ready_path: str, what: str, timeout: float = 15.0
) -> Iterator[str]:
    """A real server (Prometheus, an exporter...) on a free 127.0.0.1 port for the block:
    `argv` gets its `host:port`; yields that address once `ready_path` answers; stopped by PID."""
    from pytest_aifactory.cluster.rendezvous import free_port

    address = f"127.0.0.1:{free_port('127.0.0.1')}"
    proc = subprocess.Popen(argv(address), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: answers(f"http://{address}{ready_path}"), timeout, f"{what} ready")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
