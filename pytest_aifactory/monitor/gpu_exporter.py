"""GPU series from NVIDIA's DCGM exporter, on every node that runs a service or a client.

GPU sites usually run dcgm-exporter as a system service (port 9400 by default), and a second
exporter beside it would compete for the DCGM host engine: so a node's own exporter is used
when it answers there. Where none answers but the node has a GPU and a `dcgm-exporter` (on the
PATH, or named by the recipe or the environment: see components), the job starts one for its
lifetime, as it does the node exporter. Either way the exporter is announced as a `nodes`
target, so its samples carry the node's name and the run's labels, and what ran on the node (or
why nothing did) is written for the summary.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pytest_aifactory import direct_http
from pytest_aifactory.cluster.child import start_quiet_child, stop_child
from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.monitor.components import (
    DCGM_EXPORTER,
    ComponentSource,
    ComponentStatus,
    Missing,
    Program,
    locate,
    write_node_status,
)
from pytest_aifactory.monitor.targets import Target, base_labels, remove_target, write_target

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_PORT = 9400
PROBE_TIMEOUT_S = 2.0
DCGM_MARKER = b"DCGM_FI_"
PROBE_LIMIT_BYTES = 4 * 1024 * 1024
STARTUP_S = 15.0
"""dcgm-exporter brings up its host engine before it serves: a few seconds."""


def answers_dcgm(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether `host:port` serves DCGM metrics (not merely anything on that port)."""
    try:
        with direct_http.urlopen(f"http://{address}/metrics", timeout=timeout_s) as reply:
            return DCGM_MARKER in reply.read(PROBE_LIMIT_BYTES)
    except (OSError, ValueError):  # URLError is an OSError
        return False


def gpus_present() -> bool:
    """Whether the driver lists a GPU on this node (`nvidia-smi -L`)."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return False
    try:
        listed = subprocess.run(
            [binary, "-L"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU " in listed.stdout


def target_name(node: str) -> str:
    return f"{node}-gpu"


@contextlib.contextmanager
def gpu_exporter(
    run_root: Path,
    run_id: str,
    node: str,
    host: str,
    port: int | None,
    source: ComponentSource | None = None,
) -> Iterator[str | None]:
    """Announce this node's DCGM exporter (the site's at `host:port`, else one started here
    from `source`) for the duration of the block; yields its address, or None where the node
    has none."""

    def outcome(ran: bool, where: str | None, why: str = "") -> None:
        write_node_status(run_root, ComponentStatus(DCGM_EXPORTER, ran, where, why, node))

    if port is None:
        outcome(False, None, "turned off (monitor.gpu_exporter_port is null)")
        yield None
        return
    address = f"{host}:{port}"
    proc: subprocess.Popen[bytes] | None = None
    if answers_dcgm(address):
        outcome(True, f"the node's own at {address}")
    else:
        started = _start(source or ComponentSource(DCGM_EXPORTER, "PATH"), host)
        if isinstance(started, str):
            outcome(False, None, f"none answers on port {port}, and {started}")
            yield None
            return
        proc, address, where = started
        outcome(True, where)
    labels = base_labels(run_id, "node", node)
    write_target(run_root, Target("nodes", target_name(node), address, labels=labels))
    try:
        yield address
    finally:
        remove_target(run_root, "nodes", target_name(node))
        if proc is not None:
            stop_child(proc)


def _start(source: ComponentSource, host: str) -> tuple[subprocess.Popen[bytes], str, str] | str:
    """(the exporter, its address, where it came from), or why none was started."""
    if not gpus_present():
        return "this node has no GPU (nvidia-smi lists none)"
    program = locate(source, check_runtime=True)
    if isinstance(program, Missing):
        return f"no dcgm-exporter to start: {program.why}"
    spawned = _spawn(program, host)
    if spawned is None:
        return f"{program.source} did not start or answer (see this job's log)"
    return spawned, str(spawned.args[-1]), program.source  # type: ignore[index]


def _spawn(program: Program, host: str) -> subprocess.Popen[bytes] | None:
    address = f"{host}:{free_port(host)}"
    proc = start_quiet_child(program.argv(["--address", address], gpu=True), "GPU exporter")
    if proc is None:
        return None
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(
                f"aifactory: GPU exporter ended at start (exit {proc.returncode})",
                file=sys.stderr,
                flush=True,
            )
            return None
        if answers_dcgm(address, timeout_s=1.0):
            print(f"aifactory: GPU exporter on {address}", file=sys.stderr, flush=True)
            return proc
        time.sleep(0.2)
    print(f"aifactory: GPU exporter silent after {STARTUP_S:g} s", file=sys.stderr, flush=True)
    stop_child(proc)
    return None
