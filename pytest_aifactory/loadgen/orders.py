"""A client job that runs every level of its client, one order at a time.

On a busy queue, a job per level waits in the queue once per level, and a queue that is slow
for a moment fails the levels behind it. A client's job is therefore submitted once, at its
first level, with one task per load process, and the driver hands it each level as an order in
the job's order folder (below the run directory, shared with the job's nodes):

- `order.<n>`: the n-th level: the specs by task rank (`cases.place`; None: the task has no
  share of it), pickled and written whole by the driver;
- `done.<n>.<rank>`: a task's report on order n (its error, when it failed), written whole;
- `alive.<rank>`: a count each task rewrites every `ALIVE_EVERY_S` while the job runs, by which
  the driver tells a task killed outright (it never reports) from one still busy;
- `stop`: the driver has no more orders.

A task runs each order exactly as a job of that one level would (`runner.run_load_task`), so
records, progress files and the start barrier are the level's own. It ends when told to stop,
when the driver's heartbeat goes stale, on SIGINT or SIGTERM, and after a level that was
interrupted.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_aifactory.atomic import replacing, write_text_atomic
from pytest_aifactory.cluster.restart import refuse_restart
from pytest_aifactory.cluster.rundir import driver_gone
from pytest_aifactory.loadgen.runner import run_load_task
from pytest_aifactory.loadgen.signals import STOP_SIGNALS

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.spec import LoadSpec

ORDER_POLL_S = 0.25
"""How often an idle task looks for its next order (two file checks per look)."""
ALIVE_EVERY_S = 2.0


class OrderBox:
    """The order folder of one client job, as the driver and the job's tasks use it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _order(self, n: int) -> Path:
        return self.folder / f"order.{n}"

    @property
    def _stop(self) -> Path:
        return self.folder / "stop"

    # -- the driver ---------------------------------------------------------------------------

    def post(self, n: int, tasks: list[LoadSpec | None]) -> None:
        with replacing(self._order(n)) as tmp:
            tmp.write_bytes(pickle.dumps(tasks))

    def reports(self, n: int) -> dict[int, str | None]:
        """The tasks that reported on order n, with their errors (None: it went well)."""
        found: dict[int, str | None] = {}
        for path in self.folder.glob(f"done.{n}.*"):
            try:
                rank = int(path.name.rsplit(".", 1)[1])
                found[rank] = json.loads(path.read_text()).get("error")
            except (OSError, ValueError):
                continue  # a temporary file, or one being replaced: seen on the next look
        return found

    def alive(self) -> dict[int, str]:
        """Each task's last sign of life (a count it raises): only whether it changes matters,
        so no clock of another node is compared with the driver's."""
        signs: dict[int, str] = {}
        for path in self.folder.glob("alive.*"):
            with contextlib.suppress(OSError, ValueError):
                signs[int(path.name.rsplit(".", 1)[1])] = path.read_text()
        return signs

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._stop.touch()

    # -- a task -------------------------------------------------------------------------------

    def next_order(
        self,
        n: int,
        stopping: threading.Event,
        heartbeat_path: str | None,
        started_at: float,
    ) -> list[LoadSpec | None] | None:
        """Order n once posted; None when the job is to end instead."""
        path = self._order(n)
        while not stopping.is_set() and not self._stop.exists():
            if path.exists():
                tasks: list[LoadSpec | None] = pickle.loads(path.read_bytes())
                return tasks
            if driver_gone(heartbeat_path, started_at):
                return None
            stopping.wait(ORDER_POLL_S)
        return None

    def report(self, n: int, rank: int, error: str | None) -> None:
        write_text_atomic(self.folder / f"done.{n}.{rank}", json.dumps({"error": error}))

    @contextlib.contextmanager
    def keeping_alive(self, rank: int) -> Iterator[None]:
        """A thread rewrites `alive.<rank>` while the block runs: it goes on through a level's
        blocking work (building a dataset), and stops only with the process."""
        done = threading.Event()
        path = self.folder / f"alive.{rank}"

        def beat() -> None:
            count = 0
            while True:
                count += 1
                with contextlib.suppress(OSError):
                    write_text_atomic(path, str(count))
                if done.wait(ALIVE_EVERY_S):
                    return

        thread = threading.Thread(target=beat, name="aifactory-alive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=ALIVE_EVERY_S)


@contextlib.contextmanager
def _stop_signals(stopping: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM while waiting for an order end the task (submitit's own handling ignores
    SIGTERM, which would leave the job to be killed); during a level the load's handlers take
    over and end it cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


def serve_orders(folder: str, heartbeat_path: str | None) -> dict[str, Any]:
    """Entry point of a client job: every task runs its share of each order in turn."""
    # a restarted job would find the orders its first run served, and serve them again
    refuse_restart("client job", "a second run would send its levels again into their records")
    # deferred: submitit is slow to import and only the tasks of a client job need it
    import submitit

    rank = submitit.JobEnvironment().global_rank
    box = OrderBox(Path(folder))
    started_at = time.time()
    stopping = threading.Event()
    served = 0
    with _stop_signals(stopping), box.keeping_alive(rank):
        while (tasks := box.next_order(served, stopping, heartbeat_path, started_at)) is not None:
            error: str | None = None
            interrupted = False
            try:
                outcome = run_load_task(tasks)
                interrupted = bool(outcome.get("interrupted"))
            except Exception as err:  # the level failed in this task: say so, serve the next
                error = f"{type(err).__name__}: {err}"
            box.report(served, rank, error)
            served += 1
            if interrupted or stopping.is_set():
                break
    return {"orders": served}
