"""Children that die with the task that started them, started without running Python in a
forked copy of a process that may have gRPC's fork handlers loaded."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pytest_aifactory.cluster.child import dying_with_parent

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from pytest_aifactory.cluster.child import dying_with_parent
    child = subprocess.Popen(dying_with_parent(["sleep", "60"]))
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def test_a_child_is_stopped_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        # the launcher became the program: same PID, the program's own command line
        sleep = shutil.which("sleep")
        deadline = time.monotonic() + 10
        while child.cmdline()[:1] != [sleep] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.cmdline() == [sleep, "60"]
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert gone, f"the child outlived its killed parent: {alive}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_process_whose_fork_handlers_abort_still_starts_children() -> None:
    """gRPC's fork handlers abort a forked copy of a process that uses it; a `preexec_fn`
    would run them (this process's Python handlers stand in for gRPC's)."""
    script = textwrap.dedent(
        """
        import os, subprocess, sys
        from pytest_aifactory.cluster.child import dying_with_parent
        os.register_at_fork(after_in_child=os.abort)
        started = subprocess.run(dying_with_parent(["true"]), check=False)
        forked = subprocess.run(["true"], preexec_fn=lambda: None, check=False)
        print(started.returncode, forked.returncode)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.stdout.split() == ["0", str(-signal.SIGABRT)], done.stderr


def test_a_missing_program_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        dying_with_parent(["no-such-program-here"])
    with pytest.raises(FileNotFoundError):
        dying_with_parent(["sleep"], {"PATH": str(tmp_path)})
    sleep = Path(str(shutil.which("sleep")))
    found = dying_with_parent(["sleep", "1"], {"PATH": str(sleep.parent)})
    assert found[-2:] == [str(sleep), "1"]
    assert found[0] == sys.executable


def test_a_program_that_cannot_run_says_so(tmp_path: Path) -> None:
    script = tmp_path / "broken"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o700)
    done = subprocess.run(
        dying_with_parent([str(script)]), capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert f"aifactory: cannot start {script}" in done.stderr
    assert os.path.exists(script)
