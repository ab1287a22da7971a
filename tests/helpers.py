"""Running the benchmark suite as a user would: pytest in a subprocess, on a recipe file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pytest_aifactory.services.base import ServicePlan

REPO = Path(__file__).resolve().parent.parent
BENCHMARK = REPO / "benchmarks" / "test_inference.py"
RECIPE_DATA = REPO / "tests" / "data" / "recipes"
"""Small recipes the tests read as a user's files."""
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
        summary: dict[str, Any] = json.loads((run / "summary.json").read_text())
        return summary

    def verdicts(self) -> tuple[set[str], list[str]]:
        """The test names pytest's `-rA` summary lists as passed and as failed (whatever the
        terminal's width adds after them)."""

        def name(line: str) -> str:
            return line.rsplit("::", 1)[-1].split(" - ", 1)[0]

        lines = self.output.splitlines()
        passed = {name(line) for line in lines if line.startswith("PASSED")}
        return passed, [name(line) for line in lines if line.startswith("FAILED")]


def agreed_start(run: Path, case_id: str) -> float:
    """The wall-clock instant a fanned-out case's processes (`chat-concurrency-4`) agreed to
    start at: what the start barrier computes from the ready times they left in the run."""
    from pytest_aifactory.loadgen.barrier import START_MARGIN_S

    ready = [float(path.read_text()) for path in run.glob(f"barrier/*_{case_id}/ready.*")]
    assert ready, f"no ready times of {case_id} under {run / 'barrier'}"
    return max(ready) + START_MARGIN_S


def write_recipe(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def benchmark_command(
    recipe: Path,
    report_dir: Path,
    *args: str,
    benchmark: Path = BENCHMARK,
    cache_dir: Path | None = None,
) -> list[str]:
    """The benchmark suite on `recipe`, as a user would type it. pytest's cache (`--lf`) stays
    off unless `cache_dir` says where to keep it: a session must not write into the clone."""
    cache = ["-o", f"cache_dir={cache_dir}"] if cache_dir else ["-p", "no:cacheprovider"]
    return [
        sys.executable,
        "-m",
        "pytest",
        str(benchmark),
        "--recipe",
        str(recipe),
        "--report-dir",
        str(report_dir),
        *cache,
        *args,
    ]


UNUSED_IN_SESSIONS = ("hypothesispytest", "anyio")
"""Plugins installed for this suite's own tests that no benchmark session uses: not loading
them saves more than a second of every session's start."""


def benchmark_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """Keeps the pytest-benchmark files of a test's run inside its temporary folder; its
    session (and any it starts) loads every installed plugin but those of `UNUSED_IN_SESSIONS`."""
    merged = {
        **os.environ,
        "AIFACTORY_BENCHMARK_STORAGE": str(tmp_path / ".benchmarks"),
        **(env or {}),
    }
    skipped = " ".join(f"-p no:{name}" for name in UNUSED_IN_SESSIONS)
    merged["PYTEST_ADDOPTS"] = f"{merged.get('PYTEST_ADDOPTS', '')} {skipped}".strip()
    return merged


def run_benchmark(
    tmp_path: Path,
    recipe: Path,
    *args: str,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    benchmark: Path = BENCHMARK,
    cache_dir: Path | None = None,
) -> Session:
    """Run a benchmark module (default: the LLM serving one) on `recipe` in a subprocess."""
    report_dir = tmp_path / "reports"
    proc = subprocess.run(
        benchmark_command(recipe, report_dir, *args, benchmark=benchmark, cache_dir=cache_dir),
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


@contextlib.contextmanager
def benchmark_in_own_group(
    tmp_path: Path,
    recipe: Path,
    *args: str,
    benchmark: Path = BENCHMARK,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """The benchmark suite in a process group of its own, as a shell starts a command, so a test
    can signal the whole group as a terminal does; its output goes to `session.log`. The group
    is killed if it is still there at the end of the block."""
    with (tmp_path / "session.log").open("w") as sink:
        session = subprocess.Popen(
            benchmark_command(recipe, tmp_path / "reports", *args, benchmark=benchmark),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=benchmark_env(tmp_path, env),
            start_new_session=True,
        )
    try:
        yield session
    finally:
        if session.poll() is None:
            os.killpg(session.pid, signal.SIGKILL)
            session.wait()


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


@contextlib.contextmanager
def running_dcgm_exporter(gpus: int = 2) -> Iterator[str]:
    """The DCGM exporter stand-in on a free 127.0.0.1 port for the block (its address), stopped
    by PID: the GPU series of a machine without a GPU."""
    from pytest_aifactory.testing import dcgm_exporter

    with running_server(
        lambda address: [
            sys.executable,
            dcgm_exporter.__file__,
            "--address",
            address,
            "--gpus",
            str(gpus),
        ],
        "/metrics",
        "DCGM exporter stand-in",
    ) as address:
        yield address


def accepts(host: str, port: int) -> bool:
    """Something accepts TCP connections on `host:port`: how to tell that a server which speaks
    no HTTP (PostgreSQL) is listening."""
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


@dataclass
class RunningPlan:
    """A service plan's server running on this machine, with its output (stdout and stderr)
    kept in an unnamed file, shown when the server ends before a test could use it."""

    what: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    scratch: Path
    """The folder that replaced `{scratch}`: the server's data, for tests to look into."""
    output: IO[bytes]

    def output_tail(self, size: int = 2000) -> str:
        """The end of what the server wrote. Read at an offset: the file position is shared
        with the server, and moving it would make the server write over its earlier lines."""
        fd = self.output.fileno()
        end = os.fstat(fd).st_size
        start = max(0, end - size)
        return os.pread(fd, end - start, start).decode(errors="replace")

    def wait_until(self, predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
        """Wait for `predicate` while the server runs; when the server ends first, fail at once
        with its last output rather than after `timeout` with nothing to go on."""
        from pytest_aifactory.services.launch import describe_exit

        wait_for(lambda: self.process.poll() is not None or predicate(), timeout, what)
        returncode = self.process.poll()
        if returncode is not None:
            raise AssertionError(
                f"{self.what} {describe_exit(returncode)} before {what}:\n{self.output_tail()}"
            )


@contextlib.contextmanager
def running_plan(
    plan: ServicePlan, what: str, timeout: float = 60.0, host: str = "127.0.0.1"
) -> Iterator[RunningPlan]:
    """`plan`'s server for the block, started as a job starts it: its placeholders filled
    (`{port}` a free port, the first of a free block for a server on several; `{scratch}` a
    fresh folder in the temporary directory, where a server account other than this one can
    reach it) and `plan.env` over this process's environment. Yielded once its port accepts
    connections; then stopped by its PID (and with this process, were pytest killed) and its
    scratch folder removed, so that nothing outlives the block."""
    from pytest_aifactory.cluster.child import dying_with_parent, stop_child
    from pytest_aifactory.cluster.rendezvous import free_port, free_port_block
    from pytest_aifactory.services.launch import SCRATCH, fill_placeholders

    port = free_port_block(host, plan.ports) if plan.ports > 1 else free_port(host)
    scratch = Path(tempfile.mkdtemp(prefix=f"aifactory-{what}-test-"))
    argv = [arg.replace(SCRATCH, str(scratch)) for arg in fill_placeholders(plan.argv, host, port)]
    env = {key: value.replace(SCRATCH, str(scratch)) for key, value in plan.env.items()}
    try:
        with tempfile.TemporaryFile() as output:
            full_env = {**os.environ, **env}
            proc = subprocess.Popen(
                dying_with_parent(argv, full_env),
                env=full_env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            try:
                running = RunningPlan(what, host, port, proc, scratch, output)
                running.wait_until(lambda: accepts(host, port), f"{what} listening", timeout)
                yield running
            finally:
                stop_child(proc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def keyed_llama_server(tmp: Path, name: str, *args: str) -> Iterator[tuple[str, str]]:
    """A llama-server (SmolLM2) started as a run's service job starts it, keyed with that run's
    API key, for the block: (url, key). The run's heartbeat beats meanwhile, because the service
    job stops its server when a run stops beating. `args`: extra server arguments."""
    from pytest_aifactory.cluster.local import LocalJobExecutor
    from pytest_aifactory.cluster.rundir import RunDir, make_run_id
    from pytest_aifactory.services.manager import ServiceManager
    from tests.factories import recipe

    run = RunDir.create(tmp / "reports", make_run_id(name))
    run.start_heartbeat()
    services = ServiceManager(
        recipe(name=name, service={"args": list(args)}), run, LocalJobExecutor(run)
    )
    try:
        yield services.endpoint("llm").url, run.api_key()
    finally:
        services.stop_all()
        run.stop_heartbeat()


def run_dying_service(
    tmp_path: Path, name: str, command: str, requests: int, **service: Any
) -> Session:
    """A pytest session against a command service `svc` that runs `command` (a server meant to
    die during the load; `service`: more of its keys), loaded by an `openai` client `chat` at a
    steady 20 requests a second, `requests` in all, so the load goes on after the death; checked
    to have failed (its test did) without a traceback."""
    document = {
        "name": name,
        "services": {
            "svc": {"kind": "command", "command": command, "health_timeout_s": 60, **service}
        },
        "clients": {
            "chat": {
                "kind": "openai",
                "service": "svc",
                "dataset": {"input_tokens": 8, "output_tokens": 4},
                "load": {
                    "mode": "rate",
                    "levels": [20],
                    "arrival": "constant",
                    "requests": requests,
                },
            }
        },
        "monitor": {"prometheus": False},
    }
    session = run_benchmark(tmp_path, write_recipe(tmp_path / "recipe.yaml", document), timeout=120)
    assert session.returncode == 1, session.output
    assert "Traceback" not in session.stdout
    return session


def run_benchmark_in_allocation(
    tmp_path: Path,
    recipe: Path,
    *args: str,
    nodes: int = 3,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> Session:
    """The benchmark suite on `recipe` with the Slurm executor, run by `salloc` in a fresh
    allocation of `nodes` nodes (so its jobs become steps of it); the allocation is cancelled by
    its name afterwards, whatever became of the session."""
    name = f"aif-test-{uuid.uuid4().hex[:8]}"
    report_dir = tmp_path / "reports"
    command = [
        *("salloc", f"--nodes={nodes}", f"--job-name={name}"),
        *benchmark_command(recipe, report_dir, "--executor", "slurm", "-v", *args),
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            env=env or benchmark_env(tmp_path),
            check=False,
        )
    finally:
        subprocess.run(["scancel", f"--name={name}"], check=False, timeout=30)
    return Session(done.returncode, done.stdout, done.stderr, report_dir)


def validate_refuses(recipe: Path) -> str:
    """`aifactory recipe validate` on `recipe` in a process of its own, as a user runs it,
    refusing the recipe (exit status 1) with its problems said, never a traceback: its
    output, for the caller to find each problem's key in."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest_aifactory.cli", "recipe", "validate", str(recipe)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    return output
