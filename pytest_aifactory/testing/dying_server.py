"""The test streaming server as a command-line service that dies after some requests.

    python -m pytest_aifactory.testing.dying_server --host {host} --port {port} \
        --die-after-requests 8 --marker m

It serves the OpenAI-compatible streaming API of `streaming_server` on the given address,
says on stderr which secrets it was given (as real servers echo their settings), and once it
has received `--die-after-requests` generation requests writes a last line with `--marker`
and exits with code 3 at once, cutting the requests in flight.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from pytest_aifactory.testing.streaming_server import StreamingServer

EXIT_CODE = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--die-after-requests", type=int, required=True)
    parser.add_argument("--marker", default="dying-server")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--ttft-s", type=float, default=0.01)
    args = parser.parse_args(argv)

    server = StreamingServer(args.host, args.port, ttft_s=args.ttft_s, gap_s=0.002).start()
    print(f"{args.marker}: listening on {server.url}", file=sys.stderr, flush=True)
    print(f"{args.marker}: started with --api-key {args.api_key}", file=sys.stderr, flush=True)
    for name in sorted(os.environ):
        if name.startswith("DYING_SERVER_"):
            print(f"{args.marker}: {name}={os.environ[name]}", file=sys.stderr, flush=True)
    while len(server.seen.bodies) < args.die_after_requests:
        time.sleep(0.01)
    print(
        f"{args.marker}: giving up after {args.die_after_requests} requests",
        file=sys.stderr,
        flush=True,
    )
    os._exit(EXIT_CODE)  # no clean shutdown: requests in flight are cut, as in a crash


if __name__ == "__main__":
    sys.exit(main())
