"""jobs.json and the run index are rewritten by several processes at once (the driver, its
pytest-xdist workers, `aifactory stop`). The lock that makes each rewrite whole must work where
the run folder is on Lustre mounted with `localflock`, where `flock` is granted by each node
for itself (and each writer may be on another node): it is an O_EXCL lock file, not `flock`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from filelock import Timeout

from pytest_aifactory.cluster import run_records
from pytest_aifactory.cluster.run_records import jobs_path, rewrite_run

WRITER = textwrap.dedent(
    """
    import fcntl, sys
    from pathlib import Path

    def node_local_flock(*args, **kwargs):
        return None  # Lustre mounted with localflock: granted, but only this node knows

    fcntl.flock = node_local_flock
    fcntl.lockf = node_local_flock

    import json
    from pytest_aifactory.cluster import run_records

    run_dir = Path(sys.argv[1])
    path = run_dir / "counter.json"

    for _ in range(int(sys.argv[2])):
        with run_records._lock(run_records.jobs_path(run_dir)):  # a read-modify-write
            count = json.loads(path.read_text())["count"] if path.exists() else 0
            path.write_text(json.dumps({"count": count + 1}))
    """
)


def test_concurrent_rewrites_lose_nothing_with_node_local_flock(tmp_path: Path) -> None:
    rounds = 100
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(rounds)])
        for _ in range(2)
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    assert json.loads((tmp_path / "counter.json").read_text())["count"] == 2 * rounds
    assert not list(tmp_path.glob(".*.lock")), "the lock file outlived its holders"


def test_a_holder_killed_on_this_host_does_not_block_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\n"
            "from pytest_aifactory.cluster import run_records as r\n"
            "with r._lock(r.jobs_path(Path(sys.argv[1]))):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    monkeypatch.setattr(run_records, "LOCK_TIMEOUT_S", 0.5)
    with pytest.raises(Timeout), run_records._lock(jobs_path(tmp_path)):
        raise AssertionError("the lock was taken while its holder lives")
    monkeypatch.setattr(run_records, "LOCK_TIMEOUT_S", 30.0)
    holder.kill()
    holder.wait()
    written = rewrite_run(tmp_path, lambda _: None)  # within LOCK_TIMEOUT_S, at once
    assert written is None


def test_an_empty_lock_file_left_by_a_killed_writer_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer killed between creating its lock file and naming itself in it leaves an empty
    file that names no holder to check: once old, it must not block every later write."""
    monkeypatch.setattr(run_records, "LOCK_TIMEOUT_S", 3.0)
    lock_file = tmp_path / f".{jobs_path(tmp_path).name}.lock"
    lock_file.touch()
    old = lock_file.stat().st_mtime - 60
    os.utime(lock_file, (old, old))
    rewrite_run(tmp_path, lambda record: None)
    assert not lock_file.exists()


def test_a_fresh_empty_lock_file_is_respected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock file that is empty because its writer is naming itself right now is not taken."""
    monkeypatch.setattr(run_records, "LOCK_TIMEOUT_S", 1.5)
    monkeypatch.setattr(run_records, "ABANDONED_LOCK_S", 600.0)
    lock_file = tmp_path / f".{jobs_path(tmp_path).name}.lock"
    lock_file.touch()
    with pytest.raises(Timeout):
        rewrite_run(tmp_path, lambda record: None)
    assert lock_file.exists()
