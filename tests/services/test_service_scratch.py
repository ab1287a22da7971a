"""`{scratch}`: a service's private data folder on the node's local disk, gone when it ends."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

from pytest_aifactory.cluster.rendezvous import read_rendezvous
from tests.helpers import wait_for

LAUNCHER = """
import sys
from pytest_aifactory.services.launch import ServiceLaunch, run_service
argv = [sys.executable, "-m", "http.server", "{port}", "--bind", "{host}", "--directory",
        "{scratch}"]
run_service(ServiceLaunch(name="store", argv=argv, rendezvous_path=sys.argv[1],
                          env={"STORE_DATA": "{scratch}/data"}))
"""


def test_scratch_is_private_filled_in_and_removed(tmp_path: Path) -> None:
    rendezvous = tmp_path / "store.json"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    job = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(rendezvous)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = wait_for(lambda: read_rendezvous(rendezvous), timeout=30, what="rendezvous")
        (scratch,) = [p for p in tmp_path.iterdir() if p.name.startswith("aifactory-store-")]
        assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
        (scratch / "marker.txt").write_text("here")
        url = f"http://{info.host}:{info.port}/marker.txt"

        def served() -> bytes | None:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    return answer.read()
            except OSError:
                return None

        # the server was started with the folder as its argument
        assert wait_for(served, timeout=30, what="file served from scratch") == b"here"
        server_env = Path(f"/proc/{info.pid}/environ").read_bytes().split(b"\0")
        assert f"STORE_DATA={scratch}/data".encode() in server_env
    finally:
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=30)
    assert not scratch.exists(), stderr
