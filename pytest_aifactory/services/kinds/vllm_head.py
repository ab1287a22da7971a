"""The Ray side of a multi-node vLLM service: on rank 0 the Ray head, then the API server once
every node has joined, then Ray's shutdown; on the other ranks (`--worker`) a Ray node that
joins that head.

    python -m pytest_aifactory.services.kinds.vllm_head --ray-port 41000 --ray-port-offset 1 \\
        --node-ip 10.0.0.1 --num-gpus 4 --expect-nodes 2 -- python -m vllm.entrypoints...
    python -m pytest_aifactory.services.kinds.vllm_head --worker --head-host 10.0.0.1 \\
        --ray-port 41000 --ray-port-offset 1 --node-ip 10.0.0.2 --num-gpus 4

A service job runs one command per rank, and vLLM must not start before the Ray cluster has
all its nodes (it would plan its workers over fewer GPUs and fail), so this small launcher sits
between the job and vLLM. It uses only the standard library: inside a container image it runs
as source text under the image's own Python, where this package is not installed.

Nobody else gets in, and nothing else is stopped. A Ray cluster runs any code its clients send
as the user who started it, so the cluster requires a token (`RAY_AUTH_MODE=token`, Ray 2.52
and later; an older Ray is refused): the service's `RAY_AUTH_TOKEN`, else its API key
(`VLLM_API_KEY`, the run's own), handed to Ray through the environment, never on a command
line. The port is the run's: `--ray-port-offset` counts from the API server's port, which the
head's job chose free on its node and the workers learnt from its rendezvous, so a stranger
listening on Ray's usual 6379 captures no worker. Every Ray process of a rank lives under a
temporary folder of its own, and stopping ends those processes by PID (the launcher's children
and whatever names that folder) instead of `ray stop`, which would end every Ray process of the
user on the node.

SIGTERM or SIGINT is passed on to the server; Ray is stopped in every case, and the launcher
ends the way the server did (its exit code, or the signal that stopped it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_PR_SET_PDEATHSIG = 1
STATUS_TIMEOUT_S = 60.0
SERVER_GRACE_S = 5.0
_NODE_LINE = re.compile(r"^\s*(\d+)\s+node_\S+")
_SECTION = re.compile(r"^(\w[\w ]*):\s*$")
_LIVE_SECTIONS = {"Active", "Idle"}
"""`ray status` lists live nodes under Active (and, with autoscaler v2, Idle)."""
TOKEN_AUTH_SINCE = (2, 52)
"""The first Ray release with token authentication; an older one ignores `RAY_AUTH_MODE` and
would start a cluster anyone can use."""
_VERSION = re.compile(r"(\d+)\.(\d+)")
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
API_KEY_ENV = "VLLM_API_KEY"
RAY_PATH_ENVS = ("RAY_AUTH_TOKEN_PATH",)
"""Token sources Ray would prefer to read; the run's token is the environment's."""


class LaunchError(Exception):
    """Ray cannot be started as asked; the message says why."""


def ray_auth_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with Ray's token authentication on: the service's own `RAY_AUTH_TOKEN`, else its
    API key. Without either there is nothing to lock the cluster with, so it is not started."""
    token = env.get(TOKEN_ENV) or env.get(API_KEY_ENV)
    if not token:
        raise LaunchError(
            f"no token for the Ray cluster: set {TOKEN_ENV} or {API_KEY_ENV} in the service's "
            "env (the run gives its API key unless the recipe does)"
        )
    locked = {k: v for k, v in env.items() if k not in RAY_PATH_ENVS}
    return {**locked, AUTH_MODE_ENV: "token", TOKEN_ENV: token}


def ray_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `ray --version` (`ray, version 2.52.0`)."""
    found = _VERSION.search(text.rpartition("version")[2] or text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def check_ray(ray: str, env: dict[str, str]) -> None:
    """Refuse a Ray without token authentication before it could start an open cluster."""
    try:
        proc = subprocess.run(
            [ray, "--version"],
            capture_output=True,
            text=True,
            env=env,
            timeout=STATUS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LaunchError(f"cannot run {ray} --version: {err}") from None
    version = ray_version(proc.stdout + proc.stderr)
    if version is None or version < TOKEN_AUTH_SINCE:
        found = ".".join(map(str, version)) if version else (proc.stdout or proc.stderr).strip()
        need = ".".join(map(str, TOKEN_AUTH_SINCE))
        raise LaunchError(
            f"{ray} is Ray {found or 'of unknown version'}: Ray {need} or later is needed, the "
            "first with token authentication (without it anyone who reaches the node could run "
            "code in the cluster)"
        )


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1].isdigit():
            found.setdefault(int(fields[1]), []).append(int(entry))
    return found


def _names(pid: int, marker: str) -> bool:
    """Whether process `pid`, of this user, has `marker` on its command line."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return marker.encode() in fh.read()
    except OSError:
        return False


def ray_processes(root: int, temp_dir: str) -> list[int]:
    """The processes of one rank's Ray: `root` (its `ray start`), everything below it, and
    any process of this user that names the rank's own temporary folder (a Ray process that
    left its parent). Nothing else: another run's Ray on the node stays up."""
    children = _children()
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    for pids in children.values():
        for pid in pids:
            if pid not in found and _names(pid, temp_dir):
                found.append(pid)
    return [pid for pid in found if pid != os.getpid()]


def is_running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_processes(pids: list[int], grace_s: float = SERVER_GRACE_S) -> None:
    """SIGTERM to each, SIGKILL to those still alive after `grace_s`."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if is_running(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def live_nodes(status: str) -> int:
    """Nodes that `ray status` shows as up: the `N node_<id>` lines of its live sections."""
    count = 0
    section = ""
    for line in status.splitlines():
        heading = _SECTION.match(line)
        if heading:
            section = heading.group(1)
            continue
        found = _NODE_LINE.match(line)
        if found and section in _LIVE_SECTIONS:
            count += int(found.group(1))
    return count


def _die_with_parent() -> None:
    """In each child before exec: the kernel sends SIGTERM when this launcher dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _say(message: str) -> None:
    print(f"aifactory: {message}", file=sys.stderr, flush=True)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" not in argv:
        argv = [*argv, "--"]
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="vllm_head")
    parser.add_argument("--ray", default="ray", help="Ray's command")
    parser.add_argument("--ray-port", type=int, required=True)
    parser.add_argument(
        "--ray-port-offset", type=int, default=0, help="Ray listens on --ray-port plus this"
    )
    parser.add_argument("--node-ip", required=True, help="address of this node for Ray")
    parser.add_argument("--num-gpus", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help="join the head at --head-host")
    parser.add_argument("--head-host", help="the head's address (--worker)")
    parser.add_argument("--expect-nodes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for nodes")
    parser.add_argument("--poll-s", type=float, default=1.0)
    options = parser.parse_args(argv[:split])
    server = argv[split + 1 :]
    if options.worker:
        if options.head_host is None:
            parser.error("--worker needs --head-host")
        if server:
            parser.error("a worker runs no server command")
    elif not server:
        parser.error("no server command after --")
    return options, server


class Launcher:
    def __init__(self, options: argparse.Namespace, server: list[str]) -> None:
        self.options = options
        self.server_argv = server
        self.port = options.ray_port + options.ray_port_offset
        head = options.head_host if options.worker else options.node_ip
        self.address = f"{head}:{self.port}"
        self.signals: list[int] = []
        self.env = dict(os.environ)
        # vLLM's processes must announce the address Ray knows this node by
        self.env.setdefault("VLLM_HOST_IP", options.node_ip)
        self.temp_dir = ""

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.on_signal)
        try:
            self.env = ray_auth_env(self.env)
            check_ray(self.options.ray, self.env)
        except LaunchError as err:
            _say(str(err))
            return 2
        self.temp_dir = tempfile.mkdtemp(prefix="aifactory-ray-")
        try:
            head = self._start_ray()
            if head is None:
                return 1
            try:
                if self.options.worker:
                    return self._follow(head)
                code = self._wait_for_nodes(head)
                if code is None:
                    code = self._serve(head)
            finally:
                self._stop_ray(head)
            return code
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def ray_argv(self) -> list[str]:
        o = self.options
        where = [f"--address={self.address}"] if o.worker else ["--head", f"--port={self.port}"]
        return [
            o.ray,
            "start",
            *where,
            f"--node-ip-address={o.node_ip}",
            f"--num-gpus={o.num_gpus}",
            f"--temp-dir={self.temp_dir}",
            *([] if o.worker else ["--include-dashboard=false"]),
            "--disable-usage-stats",
            "--block",
        ]

    def _start_ray(self) -> subprocess.Popen[bytes] | None:
        argv = self.ray_argv()
        what = "a Ray worker" if self.options.worker else "the Ray head"
        _say(f"starting {what} (token authentication on): {' '.join(argv)}")
        try:
            return subprocess.Popen(argv, env=self.env, preexec_fn=_die_with_parent)
        except OSError as err:
            _say(f"cannot start {self.options.ray}: {err.strerror or err}")
            return None

    def _follow(self, node: subprocess.Popen[bytes]) -> int:
        """A worker lasts as long as its Ray node, or until it is told to stop."""
        while node.poll() is None:
            if self.signals:
                return self._signalled()
            time.sleep(min(self.options.poll_s, 0.2))
        _say(f"the Ray node exited with code {node.returncode}")
        return node.returncode or 1

    def _count(self) -> int:
        try:
            proc = subprocess.run(
                [self.options.ray, "status", "--address", self.address],
                capture_output=True,
                text=True,
                timeout=STATUS_TIMEOUT_S,
                env=self.env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return 0
        return live_nodes(proc.stdout) if proc.returncode == 0 else 0

    def _wait_for_nodes(self, head: subprocess.Popen[bytes]) -> int | None:
        """None once every node has joined; otherwise the launcher's exit code."""
        expected = self.options.expect_nodes
        start = time.monotonic()
        seen = -1
        while True:
            if self.signals:
                return self._signalled()
            if head.poll() is not None:
                _say(f"the Ray head exited with code {head.returncode} before the nodes joined")
                return 1
            count = self._count()
            if count != seen:
                _say(f"Ray cluster at {self.address}: {count} of {expected} nodes")
                seen = count
            if count >= expected:
                return None
            if time.monotonic() - start > self.options.timeout:
                _say(
                    f"only {count} of {expected} nodes joined the Ray cluster within "
                    f"{self.options.timeout:g} s"
                )
                return 1
            time.sleep(self.options.poll_s)

    def _serve(self, head: subprocess.Popen[bytes]) -> int:
        env = {**self.env, "RAY_ADDRESS": self.address}
        _say(f"all {self.options.expect_nodes} nodes joined: {' '.join(self.server_argv)}")
        try:
            server = subprocess.Popen(self.server_argv, env=env, preexec_fn=_die_with_parent)
        except OSError as err:
            _say(f"cannot start {self.server_argv[0]}: {err.strerror or err}")
            return 1
        try:
            while server.poll() is None:
                if self.signals:
                    _stop(server, self.signals[0])
                    return self._signalled()
                if head.poll() is not None:
                    _say(f"the Ray head exited with code {head.returncode}: stopping the server")
                    _stop(server, signal.SIGTERM)
                    return 1
                time.sleep(min(self.options.poll_s, 0.2))
        finally:
            _stop(server, signal.SIGTERM)
        code = server.returncode
        return 128 - code if code < 0 else code

    def _signalled(self) -> int:
        """Exit as the signal would have ended us, so the job sees a stop, not a crash."""
        return -self.signals[0]

    def _stop_ray(self, node: subprocess.Popen[bytes]) -> None:
        """This rank's Ray processes, found before any is signalled (afterwards children that
        outlive their parent no longer hang below it), then the `ray start` itself reaped."""
        stop_processes(ray_processes(node.pid, self.temp_dir))
        _stop(node, signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)
    try:
        proc.wait(timeout=SERVER_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    options, server = _parse(sys.argv[1:] if argv is None else argv)
    return Launcher(options, server).run()


def _exit(code: int) -> None:
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1.0)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
