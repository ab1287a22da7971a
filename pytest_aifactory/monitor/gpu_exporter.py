"""GPU series from NVIDIA's DCGM exporter, on every node that runs a service or a client.

GPU sites usually run dcgm-exporter as a system service (port 9400 by default), and a second
exporter beside it would compete for the DCGM host engine: so a node's own exporter is used
when it answers there. Where none answers but the node has a GPU and a `dcgm-exporter` (on the
PATH, or named by the recipe or the environment: see components), the job starts one for its
lifetime, as it does the node exporter. Either way the exporter is announced as a `nodes`
target, so its samples carry the node's name and the run's labels, and what ran on the node (or
why nothing did) is written for the summary.

The exporter the job starts listens on the node's address, which every other account on a
shared node can reach: it gets the run's monitoring web config (`--web-config-file`, the
Prometheus exporter toolkit's, in dcgm-exporter since 3.3.3-3.3.0), so only the run's
Prometheus, which sends the run's password, reads it. A site's own exporter stays as the site
runs it: the run cannot lock it, and does not send it the password either (whatever answers on
the site's port gets no secret of the run's); its target says so (`aif_auth="none"`).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
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
from pytest_aifactory.monitor.credentials import MonitorCredentials, read_credentials
from pytest_aifactory.monitor.series import AUTH_LABEL
from pytest_aifactory.monitor.targets import (
    NO_AUTH,
    Target,
    base_labels,
    remove_target,
    write_target,
)

if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_PORT = 9400
PROBE_TIMEOUT_S = 2.0
DCGM_MARKER = b"DCGM_FI_"
PROBE_LIMIT_BYTES = 4 * 1024 * 1024
STARTUP_S = 15.0
"""dcgm-exporter brings up its host engine before it serves: a few seconds."""
WEB_CONFIG_FLAG = "--web-config-file"
"""dcgm-exporter's flag for the exporter toolkit's web config."""
SINCE = "3.3.3-3.3.0"
"""The first dcgm-exporter release that takes `WEB_CONFIG_FLAG` (January 2024)."""
SITE_OPEN_NOTE = "scraped without the run's credentials: as open as the site runs it"


def answers_dcgm(
    address: str, timeout_s: float = PROBE_TIMEOUT_S, headers: dict[str, str] | None = None
) -> bool:
    """Whether `host:port` serves DCGM metrics (not merely anything on that port) to a request
    with `headers` (the run's credentials, for an exporter it locked)."""
    request = urllib.request.Request(f"http://{address}/metrics", headers=headers or {})
    try:
        with direct_http.urlopen(request, timeout=timeout_s) as reply:
            return DCGM_MARKER in reply.read(PROBE_LIMIT_BYTES)
    except (OSError, ValueError):  # URLError (a 401 too) is an OSError
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
    labels = base_labels(run_id, "node", node)
    if answers_dcgm(address):
        outcome(True, f"the node's own at {address} ({SITE_OPEN_NOTE})")
        labels[AUTH_LABEL] = NO_AUTH
    else:
        credentials = read_credentials(run_root)
        started = _start(source or ComponentSource(DCGM_EXPORTER, "PATH"), host, credentials)
        if isinstance(started, str):
            outcome(False, None, f"none answers on port {port}, and {started}")
            yield None
            return
        proc, address = started.proc, started.address
        outcome(True, started.source)
    write_target(run_root, Target("nodes", target_name(node), address, labels=labels))
    try:
        yield address
    finally:
        remove_target(run_root, "nodes", target_name(node))
        if proc is not None:
            stop_child(proc)


@dataclass(frozen=True)
class _Started:
    proc: subprocess.Popen[bytes]
    address: str
    source: str
    """Where the program came from, as the summary says it."""


def exporter_args(address: str, web_config: Path | None) -> list[str]:
    args = ["--address", address]
    if web_config is not None:
        args += [WEB_CONFIG_FLAG, str(web_config)]
    return args


def _start(
    source: ComponentSource, host: str, credentials: MonitorCredentials | None
) -> _Started | str:
    """The exporter started here, or why none was. With the run's credentials (a monitored
    run has them) it is locked with them; an exporter too old to take a web config does not
    start, and is not started open instead."""
    if not gpus_present():
        return "this node has no GPU (nvidia-smi lists none)"
    program = locate(source, check_runtime=True)
    if isinstance(program, Missing):
        return f"no dcgm-exporter to start: {program.why}"
    address = f"{host}:{free_port(host)}"
    proc = _spawn(program, address, credentials)
    if proc is None:
        why = f"{program.source} did not start or answer (see this job's log)"
        if credentials is not None:
            why += f"; it is started with {WEB_CONFIG_FLAG}, which dcgm-exporter takes from {SINCE}"
        return why
    return _Started(proc, address, program.source)


def _spawn(
    program: Program, address: str, credentials: MonitorCredentials | None
) -> subprocess.Popen[bytes] | None:
    """The running exporter, once it answers with the run's credentials (None when it would
    not)."""
    web_config = credentials.web_config if credentials else None
    headers = credentials.header if credentials else None
    binds = [str(web_config.parent)] if web_config else []
    argv = program.argv(exporter_args(address, web_config), binds=binds, gpu=True)
    proc = start_quiet_child(argv, "GPU exporter")
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
        if answers_dcgm(address, timeout_s=1.0, headers=headers):
            print(f"aifactory: GPU exporter on {address}", file=sys.stderr, flush=True)
            return proc
        time.sleep(0.2)
    print(f"aifactory: GPU exporter silent after {STARTUP_S:g} s", file=sys.stderr, flush=True)
    stop_child(proc)
    return None
