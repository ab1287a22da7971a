"""Stopping processes we started: the grace each stopper gives, which PIDs are still ours, and
stopping a process tree whole."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from pytest_aifactory.cluster import slurm
from pytest_aifactory.cluster.local import (
    JOB_STOP_GRACE_S,
    STOP_GRACE_S,
    same_process,
    stop_process_tree,
)
from pytest_aifactory.services.kinds import vllm_head

GRACEFUL = """
import signal, sys, time
def stop(*_):
    time.sleep(0.5)  # closing up takes a moment
    sys.exit(7)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; none is left running after it."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def start(procs: list[subprocess.Popen[str]], code: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_each_stopper_outwaits_what_it_stops() -> None:
    # vLLM's launcher stops its server inside a service job, which the job's stopper stops
    assert vllm_head.SERVER_GRACE_S < STOP_GRACE_S < JOB_STOP_GRACE_S
    assert slurm.CANCEL_WAIT_S >= JOB_STOP_GRACE_S


def test_a_pid_is_ours_only_while_its_start_time_matches(
    started: list[subprocess.Popen[str]],
) -> None:
    proc, _ = start(started, GRACEFUL)
    created = psutil.Process(proc.pid).create_time()
    assert same_process(proc.pid, created) is not None
    assert same_process(proc.pid, created - 100) is None  # the PID now names another process
    cmdline = psutil.Process(proc.pid).cmdline()
    assert same_process(proc.pid, None, cmdline) is not None  # no start time: the command line
    assert same_process(proc.pid, None, ["other"]) is None
    assert same_process(proc.pid, None) is None  # nothing recorded proves it


def test_a_process_gets_its_grace_to_stop_cleanly(started: list[subprocess.Popen[str]]) -> None:
    proc, _ = start(started, GRACEFUL)
    stopped = stop_process_tree([psutil.Process(proc.pid)], grace_s=5.0)
    assert stopped == [proc.pid]
    assert proc.wait(timeout=5) == 7  # its own exit, not SIGKILL's


def test_the_whole_tree_is_stopped(started: list[subprocess.Popen[str]]) -> None:
    parent, child_pid = start(started, PARENT)
    child = psutil.Process(int(child_pid))
    stopped = stop_process_tree([psutil.Process(parent.pid)], grace_s=1.0)
    assert stopped == sorted([parent.pid, child.pid])
    assert parent.wait(timeout=5) == -15
    # the child outlived its parent's SIGTERM: it was signalled too
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
