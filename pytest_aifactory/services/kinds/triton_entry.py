"""What a `triton` service job runs: it sets up Triton's ports (and, for the server bundled in a
Python package, its Python backend), then becomes `tritonserver`.

    python -m pytest_aifactory.services.kinds.triton_entry --host H --port P \\
        --model-repository DIR [--server PATH] [--bundle DIR --backend-directory DIR] \\
        [-- more tritonserver arguments]

Triton listens on three ports: HTTP on P (the service's own port), gRPC on P+1 and metrics on
P+2, its usual 8000/8001/8002 layout shifted to P. They are checked free before the start, so
a taken one is reported by number rather than by a server that half starts.

The process replaces itself with `tritonserver` (exec), so the job's server process is Triton:
stopping the job stops Triton, and nothing stays behind.

`--bundle`: the server is the one `nvidia-pytriton` ships, whose Python backend has no stub in
its backend folder (the stub must match the Python that runs the models). A backend folder is
made in `--backend-directory` with links to the bundle's backend and to this Python's stub, and
the environment points the stub at this Python: its shared library on LD_LIBRARY_PATH, its
`python3` first on PATH (the stub takes its prefix, hence its site-packages, from there).

Triton's administrative protocols (loading and unloading models, shared memory, statistics,
tracing, logging) answer only requests with the header `x-aifactory-key` set to the service's
key, taken from `AIFACTORY_TRITON_KEY` in the environment (`--http-restricted-api`,
`--grpc-restricted-protocol`). Health, metadata, model configuration and inference stay open:
the run's clients call them without a key. tritonserver takes the key only on its command line,
where other users of the node can read it (`ps`), so the key is the service's own, never the
run's API key, and it keeps out users elsewhere on the network, not those on the node.

Every Python backend server gets its own shared-memory prefix, so several servers on one node
do not collide. Standard library only: in a container image it runs as source text under the
image's own `python3`, where this package is not installed.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import sysconfig
from pathlib import Path

GRPC_OFFSET = 1
METRICS_OFFSET = 2
EXIT_TIMEOUT_S = "5"
"""How long Triton waits for in-flight requests when stopped (its default is 30 s)."""
PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB = "triton_python_backend_stub"
KEY_ENV = "AIFACTORY_TRITON_KEY"
KEY_HEADER = "x-aifactory-key"
GRPC_KEY_HEADER = f"triton-grpc-protocol-{KEY_HEADER}"
"""Over gRPC, Triton expects the restricted protocols' header under this prefixed name."""
RESTRICTED = "model-repository,shared-memory,statistics,trace,logging"
"""The protocols only a holder of the key may call: loading a model runs its code in the
server (the Python backend), the others read or change the server's state."""
RESTRICT_FLAGS = ("--http-restricted-api", "--grpc-restricted-protocol")


class EntryError(Exception):
    """Triton cannot be started as asked; the message says why."""


def ports(http_port: int) -> tuple[int, int]:
    """(gRPC, metrics) ports beside an HTTP port."""
    return http_port + GRPC_OFFSET, http_port + METRICS_OFFSET


def check_free(host: str, *wanted: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in wanted:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                raise EntryError(
                    f"port {port} on {host} is taken ({err.strerror}): Triton needs its HTTP "
                    "port and the next two (gRPC, metrics) free; choose another `port`"
                ) from None


def link_backends(bundle: Path, target: Path) -> Path:
    """A backend folder for the bundle's server: its Python backend with this Python's stub."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundle / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        raise EntryError(
            f"the Triton bundle in {bundle} has no Python backend stub for Python {version}"
        )
    python = target / "python"
    python.mkdir(parents=True, exist_ok=True)
    for name in PYTHON_BACKEND_FILES:
        source = bundle / "backends" / "python" / name
        if not source.is_file():
            raise EntryError(f"the Triton bundle in {bundle} lacks backends/python/{name}")
        (python / name).symlink_to(source)
    (python / STUB).symlink_to(stub)
    return target


def bundle_env(env: dict[str, str]) -> dict[str, str]:
    """This Python for the stub: its libpython first on the library path, `python3` on PATH."""
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    paths = [libdir, *filter(None, env.get("LD_LIBRARY_PATH", "").split(":"))]
    bindir = str(Path(sys.executable).parent)
    return {
        **env,
        "LD_LIBRARY_PATH": ":".join(paths),
        "PATH": ":".join([bindir, *filter(None, env.get("PATH", "").split(":"))]),
    }


def _given(extra: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in extra)


def restricted(key: str, extra: list[str]) -> list[str]:
    """Triton's flags that lock its administrative protocols with `key` (none the recipe's own
    `args` set themselves)."""
    if not key:
        return []
    value = f"{RESTRICTED}:{KEY_HEADER}={key}"
    return [f"{flag}={value}" for flag in RESTRICT_FLAGS if not _given(extra, flag)]


def command(args: argparse.Namespace, backend_dir: Path | None, key: str = "") -> list[str]:
    grpc, metrics = ports(args.port)
    argv = [
        args.server,
        f"--model-repository={args.model_repository}",
        f"--http-address={args.host}",
        f"--http-port={args.port}",
        f"--grpc-address={args.host}",
        f"--grpc-port={grpc}",
        f"--metrics-address={args.host}",
        f"--metrics-port={metrics}",
    ]
    if backend_dir is not None:
        argv.append(f"--backend-directory={backend_dir}")
    extra = list(args.extra)
    if not any("shm-region-prefix-name" in arg for arg in extra):
        # the PID stays the server's after exec: unique among the node's live servers
        argv.append(f"--backend-config=python,shm-region-prefix-name=aifactory{os.getpid()}_")
    if not _given(extra, "--exit-timeout-secs"):
        argv.append(f"--exit-timeout-secs={EXIT_TIMEOUT_S}")
    return [*argv, *restricted(key, extra), *extra]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="triton_entry")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True, help="HTTP port")
    parser.add_argument("--model-repository", required=True)
    parser.add_argument("--server", default="tritonserver")
    parser.add_argument("--bundle", type=Path, help="nvidia-pytriton's tritonserver folder")
    parser.add_argument("--backend-directory", type=Path, help="where to link its backends")
    parser.add_argument("extra", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.extra and args.extra[0] == "--":
        args.extra = args.extra[1:]
    if args.bundle is not None and args.backend_directory is None:
        parser.error("--bundle needs --backend-directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    try:
        check_free(args.host, *ports(args.port))
        backend_dir = None
        if args.bundle is not None:
            backend_dir = link_backends(args.bundle, args.backend_directory)
            env = bundle_env(env)
        argv_out = command(args, backend_dir, env.pop(KEY_ENV, ""))
    except EntryError as err:
        print(f"triton: {err}", file=sys.stderr, flush=True)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv_out[0], argv_out, env)
    except OSError as err:
        print(f"triton: cannot run {argv_out[0]}: {err.strerror or err}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
