"""A stand-in for NVIDIA's dcgm-exporter, for a machine without GPUs.

    python -m pytest_aifactory.testing.dcgm_exporter --address 127.0.0.1:9400 [--gpus 2]
        [--without-energy] [--web-config-file web-config.yml]

Serves `/metrics` in dcgm-exporter's format (the DCGM fields the run keeps, one series per GPU
with its `gpu`, `UUID`, `device` and `modelName` labels). Utilization moves with the clock, so
samples at different times differ, as a busy GPU's do. Power follows utilization, and the energy
counter is exactly the integral of that power since the exporter started (a real one counts
since the driver loaded), so a test can tell what energy any window holds (`energy_mj`).
`--without-energy` leaves the counter out, as on GPUs whose driver does not report it. No real
part can show GPU series here.

`--web-config-file` is dcgm-exporter's flag (3.3.3-3.3.0 and later) for the Prometheus exporter
toolkit's web config, and the stand-in enforces its `basic_auth_users` as the toolkit does: the
file is read again for every request, a request without valid basic credentials gets 401 with
`WWW-Authenticate: Basic` whatever its path, an unknown user is checked against a fixed hash
(so a wrong name takes as long as a wrong password), and a file that cannot be read or parsed
stops the program at start and answers 500 later. TLS settings are not served.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import math
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import yaml

ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
FIELDS = (
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
    (ENERGY, "counter", "Total energy consumption since boot (in mJ)."),
)
IDLE_W = 60.0
W_PER_PERCENT = 3.0
"""Power = IDLE_W + W_PER_PERCENT x utilization (the unrounded one)."""
PERIOD_S = 3.0
"""Utilization is 50 + 45 sin(t / PERIOD_S + gpu) percent."""


def utilization(gpu: int, now: float) -> float:
    return 50 + 45 * math.sin(now / PERIOD_S + gpu)


def power_w(gpu: int, now: float) -> float:
    return IDLE_W + W_PER_PERCENT * utilization(gpu, now)


def _energy_since_zero_mj(gpu: int, now: float) -> float:
    """The integral of `power_w` from time 0 to `now`, up to a constant, in millijoules."""
    mean_w = IDLE_W + W_PER_PERCENT * 50
    swing_w = W_PER_PERCENT * 45
    return 1000 * (mean_w * now - swing_w * PERIOD_S * math.cos(now / PERIOD_S + gpu))


def energy_mj(gpu: int, now: float, since: float) -> float:
    """The energy counter at `now` of an exporter started at `since`: the GPU's power
    integrated over that time. Any window's energy is the difference of two of these, whatever
    `since` was."""
    return _energy_since_zero_mj(gpu, now) - _energy_since_zero_mj(gpu, since)


def exposition(gpus: int, now: float, since: float | None = None, energy: bool = True) -> str:
    """`since`: when the energy counter started (default: `now`, a counter at zero)."""
    started = now if since is None else since
    lines = []
    for name, kind, help_text in FIELDS:
        if name == ENERGY and not energy:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for gpu in range(gpus):
            value = {
                "DCGM_FI_DEV_GPU_UTIL": round(utilization(gpu, now)),
                "DCGM_FI_DEV_FB_USED": 1024 + 100 * gpu,
                "DCGM_FI_DEV_POWER_USAGE": round(power_w(gpu, now), 3),
                ENERGY: round(energy_mj(gpu, now, started)),
            }[name]
            labels = (
                f'gpu="{gpu}",UUID="GPU-0000000{gpu}-test",device="nvidia{gpu}",'
                f'modelName="NVIDIA A100-SXM4-40GB",Hostname="testnode"'
            )
            lines.append(f"{name}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


UNKNOWN_USER_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
"""What an unknown user's password is checked against (the toolkit's fixed hash of a password
no one uses), so that whether a user name exists does not show in the time an answer takes."""


class WebConfigError(Exception):
    """The web config cannot be read or is not what the toolkit takes."""


def read_web_config(path: Path) -> dict[str, bytes]:
    """The `basic_auth_users` of the web config at `path` (user -> bcrypt hash); empty: none,
    and every request is let in, as the toolkit does."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise WebConfigError(f"{path}: {err}") from None
    users = document.get("basic_auth_users") if isinstance(document, dict) else None
    if users is None:
        return {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{path}: basic_auth_users is not a mapping of user to hash")
    return {str(user): str(hashed).encode() for user, hashed in users.items()}


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header, as Go's `Request.BasicAuth`
    reads it; None for any other header or none."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def authorized(users: dict[str, bytes], header: str | None) -> bool:
    if not users:
        return True
    given = basic_credentials(header)
    if given is None:
        return False
    user, password = given
    hashed = users.get(user)
    matches = bcrypt.checkpw(password.encode(), hashed or UNKNOWN_USER_HASH)
    return hashed is not None and matches


def metrics_handler(
    exposition: Callable[[], str], web_config: Path | None = None
) -> type[BaseHTTPRequestHandler]:
    """A request handler serving `exposition()` at `/metrics` in Prometheus' text format;
    with `web_config`, only to requests its basic auth lets in."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if web_config is not None and not self._let_in(web_config):
                return
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _let_in(self, path: Path) -> bool:
            """Whether the request passes the web config read now; answered here if not."""
            try:
                users = read_web_config(path)
            except WebConfigError:
                self.send_error(500)
                return False
            if authorized(users, self.headers.get("Authorization")):
                return True
            body = b"Unauthorized\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", "Basic")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return False

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def serve(address: str, gpus: int, energy: bool = True, web_config: Path | None = None) -> None:
    host, port = address.rsplit(":", 1)
    since = time.time()
    handler = metrics_handler(lambda: exposition(gpus, time.time(), since, energy), web_config)
    ThreadingHTTPServer((host or "0.0.0.0", int(port)), handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-a", "--address", default=":9400")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument(
        "--without-energy", action="store_true", help="leave the energy counter out"
    )
    parser.add_argument(
        "--web-config-file", type=Path, help="the exporter toolkit's web config (basic auth)"
    )
    args = parser.parse_args()
    if args.web_config_file is not None:
        try:
            read_web_config(args.web_config_file)
        except WebConfigError as err:
            sys.exit(f"dcgm-exporter stand-in: invalid web config: {err}")
    serve(args.address, args.gpus, energy=not args.without_energy, web_config=args.web_config_file)


if __name__ == "__main__":
    main()
