"""Rank 0 of a multi-node vLLM service: the Ray head, then the API server once every node has
joined, then Ray's shutdown.

    python -m pytest_aifactory.services.kinds.vllm_head --ray-port 6379 --node-ip 10.0.0.1 \\
        --num-gpus 4 --expect-nodes 2 -- python -m vllm.entrypoints.openai.api_server ...

A service job runs one command per rank, and vLLM must not start before the Ray cluster has
all its nodes (it would plan its workers over fewer GPUs and fail), so this small launcher sits
between the job and vLLM. It uses only the standard library: inside a container image it runs
as source text under the image's own Python, where this package is not installed.

SIGTERM or SIGINT is passed on to the server; Ray is stopped in every case, and the launcher
ends the way the server did (its exit code, or the signal that stopped it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1
STATUS_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
SERVER_GRACE_S = 5.0
_NODE_LINE = re.compile(r"^\s*(\d+)\s+node_\S+")
_SECTION = re.compile(r"^(\w[\w ]*):\s*$")
_LIVE_SECTIONS = {"Active", "Idle"}
"""`ray status` lists live nodes under Active (and, with autoscaler v2, Idle)."""


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
        raise SystemExit("usage: vllm_head [options] -- SERVER COMMAND...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="vllm_head")
    parser.add_argument("--ray", default="ray", help="Ray's command")
    parser.add_argument("--ray-port", type=int, default=6379)
    parser.add_argument("--node-ip", required=True, help="address of this node for Ray")
    parser.add_argument("--num-gpus", type=int, default=0)
    parser.add_argument("--expect-nodes", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for nodes")
    parser.add_argument("--poll-s", type=float, default=1.0)
    options = parser.parse_args(argv[:split])
    server = argv[split + 1 :]
    if not server:
        parser.error("no server command after --")
    return options, server


class Launcher:
    def __init__(self, options: argparse.Namespace, server: list[str]) -> None:
        self.options = options
        self.server_argv = server
        self.address = f"{options.node_ip}:{options.ray_port}"
        self.signals: list[int] = []
        self.env = dict(os.environ)
        # vLLM's processes must announce the address Ray knows this node by
        self.env.setdefault("VLLM_HOST_IP", options.node_ip)

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.on_signal)
        head = self._start_head()
        if head is None:
            return 1
        try:
            code = self._wait_for_nodes(head)
            if code is None:
                code = self._serve(head)
        finally:
            self._stop_ray(head)
        return code

    def _start_head(self) -> subprocess.Popen[bytes] | None:
        o = self.options
        argv = [
            o.ray,
            "start",
            "--head",
            f"--port={o.ray_port}",
            f"--node-ip-address={o.node_ip}",
            f"--num-gpus={o.num_gpus}",
            "--block",
        ]
        _say(f"starting the Ray head: {' '.join(argv)}")
        try:
            return subprocess.Popen(argv, env=self.env, preexec_fn=_die_with_parent)
        except OSError as err:
            _say(f"cannot start {o.ray}: {err.strerror or err}")
            return None

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

    def _stop_ray(self, head: subprocess.Popen[bytes]) -> None:
        _stop(head, signal.SIGTERM)
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [self.options.ray, "stop"], env=self.env, timeout=STOP_TIMEOUT_S, check=False
            )


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
