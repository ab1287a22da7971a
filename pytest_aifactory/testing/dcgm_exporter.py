"""A stand-in for NVIDIA's dcgm-exporter, for a machine without GPUs.

    python -m pytest_aifactory.testing.dcgm_exporter --address 127.0.0.1:9400 [--gpus 2]
        [--without-energy]

Serves `/metrics` in dcgm-exporter's format (the DCGM fields the run keeps, one series per GPU
with its `gpu`, `UUID`, `device` and `modelName` labels). Utilization moves with the clock, so
samples at different times differ, as a busy GPU's do. Power follows utilization, and the energy
counter is exactly the integral of that power since the exporter started (a real one counts
since the driver loaded), so a test can tell what energy any window holds (`energy_mj`).
`--without-energy` leaves the counter out, as on GPUs whose driver does not report it. No real
part can show GPU series here.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


def metrics_handler(exposition: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    """A request handler serving `exposition()` at `/metrics` in Prometheus' text format."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            body = exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def serve(address: str, gpus: int, energy: bool = True) -> None:
    host, port = address.rsplit(":", 1)
    since = time.time()
    handler = metrics_handler(lambda: exposition(gpus, time.time(), since, energy))
    ThreadingHTTPServer((host or "0.0.0.0", int(port)), handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-a", "--address", default=":9400")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument(
        "--without-energy", action="store_true", help="leave the energy counter out"
    )
    args = parser.parse_args()
    serve(args.address, args.gpus, energy=not args.without_energy)


if __name__ == "__main__":
    main()
