"""`aifactory ui`: start the local web interface and print the address to open, token included.

The interface listens on the loopback address only: it starts and stops benchmarks with the
user's rights, and login nodes are shared. Its address with the token also goes into a file
only the user can read (as Jupyter's runtime files), for scripts and for finding it again; the
file goes away when the interface stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Any

from pytest_aifactory.cli_common import Subcommands, print_error
from pytest_aifactory.cluster.run_records import state_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
RUNTIME_FOLDER = "ui"


def runtime_file(port: int) -> Path:
    return state_dir() / RUNTIME_FOLDER / f"ui-{port}.json"


def write_runtime_file(port: int, url: str, token: str) -> Path:
    """`state/ui/ui-PORT.json`, readable by the user alone from the moment it exists."""
    path = runtime_file(port)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"url": url, "port": port, "token": token, "pid": os.getpid()}
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a crashed interface's file on a port reused now
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    return path


def _can_show_a_browser() -> bool:
    """A graphical session: elsewhere (an SSH login) `webbrowser` would start a text browser in
    the terminal the interface prints to."""
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


async def serve(args: argparse.Namespace, token: str) -> int:
    # deferred: aiohttp's server and the interface's routes load only for this command
    from aiohttp import web

    # deferred: the application imports the whole API
    from pytest_aifactory.ui.app import make_app

    app = make_app(args.reports, args.recipes, token)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        print_error(f"cannot listen on 127.0.0.1:{args.port}: {err.strerror or err}")
        return EXIT_USAGE
    port = int(runner.addresses[0][1])
    url = f"http://{args.host}:{port}/?token={token}"
    try:
        path = write_runtime_file(port, url, token)
    except OSError as err:
        await runner.cleanup()
        print_error(f"cannot write {runtime_file(port)}: {err.strerror or err}")
        return EXIT_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(f"aifactory ui: serving {Path(args.reports).expanduser().absolute()} on", flush=True)
        print(f"    {url}", flush=True)
        print("open that URL (it carries the access token); Ctrl-C stops the interface", flush=True)
        if not args.no_browser and _can_show_a_browser():
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        await stop.wait()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        await runner.cleanup()
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    if args.host not in LOOPBACK_HOSTS:
        print_error(
            f"--host {args.host}: the interface listens on 127.0.0.1 or localhost only (it starts "
            "and stops benchmarks as you, and other users of this machine could reach any other "
            "address); from another machine, forward the port: ssh -L PORT:127.0.0.1:PORT HOST"
        )
        return EXIT_USAGE
    if not 0 <= args.port <= 65535:
        print_error(f"--port {args.port}: expected a port number from 0 to 65535")
        return EXIT_USAGE
    token = secrets.token_urlsafe(32)
    result: Any = asyncio.run(serve(args, token))
    return int(result)


def register_ui(subcommands: Subcommands) -> None:
    ui = subcommands.add_parser(
        "ui",
        help="start the local web interface: start sessions, follow runs live, open reports",
        description="Serve a web interface on 127.0.0.1: the experiments dashboard, the runs "
        "going on with their live counters, server series and logs, and a form to validate a "
        "recipe and start a session. Every request needs the token in the printed URL.",
    )
    ui.add_argument(
        "--reports", default="reports", metavar="DIR", help="the reports folder (reports/)"
    )
    ui.add_argument(
        "--recipes", default="recipes", metavar="DIR", help="recipes offered in the form (recipes/)"
    )
    ui.add_argument(
        "--port", type=int, default=0, metavar="N", help="port to listen on (default: a free one)"
    )
    ui.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="127.0.0.1 (default) or localhost: nothing else is accepted",
    )
    ui.add_argument(
        "--no-browser", action="store_true", help="do not open a browser on the printed URL"
    )
    ui.set_defaults(func=cmd_ui)
