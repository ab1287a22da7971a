"""The node-wide lock jobs take instead of a lock file in the run folder (which may be on Lustre
without `flock`): one holder per node, freed however the holder ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from pytest_aifactory.cluster.node_lock import node_lock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pytest_aifactory.cluster.node_lock import node_lock
    with node_lock(sys.argv[1]) as held:
        print("held" if held else "refused", flush=True)
        time.sleep(600)
    """
)


def start_holder(key: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, key], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_until_the_holder_is_killed() -> None:
    key = "run-a|n1|exporters"
    holder = start_holder(key)
    try:
        with node_lock(key) as held:
            assert not held
        with node_lock("run-b|n1|exporters") as other:
            assert other, "another run's lock is another lock"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with node_lock(key) as held:  # no stale lock: the kernel freed it with the process
        assert held


def test_the_lock_is_free_again_after_the_block() -> None:
    with node_lock("run-c|n1") as first:
        assert first
        with node_lock("run-c|n1") as second:
            assert not second
    with node_lock("run-c|n1") as again:
        assert again
