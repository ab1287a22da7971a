"""A stand-in for NVIDIA's dcgm-exporter, for a machine without GPUs.

    python -m pytest_aifactory.testing.dcgm_exporter --address 127.0.0.1:9400 [--gpus 2]

Serves `/metrics` in dcgm-exporter's format (the three DCGM fields the run keeps, one series per
GPU with its `gpu`, `UUID`, `device` and `modelName` labels). Utilization moves with the clock,
so samples at different times differ, as a busy GPU's do. No real part can show GPU series here.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FIELDS = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)."),
)


def exposition(gpus: int, now: float) -> str:
    lines = []
    for name, help_text in FIELDS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for gpu in range(gpus):
            utilization = round(50 + 45 * math.sin(now / 3 + gpu))
            value = {
                "DCGM_FI_DEV_GPU_UTIL": utilization,
                "DCGM_FI_DEV_FB_USED": 1024 + 100 * gpu,
                "DCGM_FI_DEV_POWER_USAGE": 60.0 + 3 * utilization,
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


def serve(address: str, gpus: int) -> None:
    host, port = address.rsplit(":", 1)
    handler = metrics_handler(lambda: exposition(gpus, time.time()))
    ThreadingHTTPServer((host or "0.0.0.0", int(port)), handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-a", "--address", default=":9400")
    parser.add_argument("--gpus", type=int, default=1)
    args = parser.parse_args()
    serve(args.address, args.gpus)


if __name__ == "__main__":
    main()
