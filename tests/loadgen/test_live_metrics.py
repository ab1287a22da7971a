"""Live client counters: a real pushgateway, the pusher of the load process, `status --watch`."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.cli import main
from pytest_aifactory.cli_jobs import render_watch, watch_run
from pytest_aifactory.cluster import run_records
from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.cluster.run_records import RunRecord, process_ref, write_run
from pytest_aifactory.loadgen.live import (
    ClientCounters,
    LivePusher,
    fetch_client_counters,
    parse_client_counters,
    progress_counters,
)
from pytest_aifactory.loadgen.progress import Progress
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.monitor.layout import MonitorEndpoints, write_endpoints
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer
from tests.components import require_component
from tests.helpers import running_server, wait_for

PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
PUSH_THREAD = "aifactory-live-push"


@pytest.fixture
def pushgateway() -> Iterator[str]:
    """A real pushgateway on 127.0.0.1, stopped by its PID."""
    require_component("prometheus-pushgateway")
    with running_server(
        lambda address: [PUSHGATEWAY, f"--web.listen-address={address}"], "/-/ready", "pushgateway"
    ) as address:
        yield f"http://{address}"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a gateway that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def state_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(run_records.STATE_DIR_ENV, str(tmp_path / "state"))


def key(run: str, process: int = 0, client: str = "chat") -> dict[str, str]:
    return {
        "aif_run": run,
        "client": client,
        "level": "concurrency=4",
        "node": "n1",
        "process": str(process),
    }


def done(pusher: LivePusher, tokens: int = 0, error: str = "") -> None:
    pusher.on_done({"error": error, "output_tokens": tokens})


def make_run(tmp_path: Path, **fields: Any) -> RunRecord:
    run_dir = tmp_path / "20240501-120000-live"
    run_dir.mkdir(parents=True)
    record = RunRecord(
        run_id=run_dir.name,
        run_dir=str(run_dir),
        recipe="live",
        executor="local",
        driver_host=socket.gethostname(),
        started_at=dt.datetime.now(dt.UTC),
        **fields,
    )
    write_run(record)
    run_records.update_index(record.run_dir, run_records.index_entry(record))
    return record


def table_row(text: str, first: str, process: str) -> list[str]:
    rows = [line.split() for line in text.splitlines() if line.startswith(first + " ")]
    (row,) = [r for r in rows if r[3] == process]
    return row


# -- the pusher ----------------------------------------------------------------------------------


def test_counters_reach_the_pushgateway_per_process_and_run(pushgateway: str) -> None:
    mine = LivePusher(pushgateway, key("run-a", 0), interval_s=0.1)
    other_process = LivePusher(pushgateway, key("run-a", 1), interval_s=0.1)
    other_run = LivePusher(pushgateway, key("run-b", 0), interval_s=0.1)
    for pusher in (mine, other_process, other_run):
        pusher.start()
    try:
        for _ in range(5):
            mine.on_sent()
        done(mine, tokens=10)
        done(mine, tokens=12)
        done(mine, tokens=8)
        done(mine, error="HTTPError: 500")
        other_process.on_sent()
        done(other_process, tokens=3)
        other_run.on_sent()

        expected = [
            ClientCounters("chat", "concurrency=4", "n1", "0", 3, 1, 30, 1),
            ClientCounters("chat", "concurrency=4", "n1", "1", 1, 0, 3, 0),
        ]
        seen: list[list[ClientCounters]] = []

        def both() -> bool:
            # a push may carry a snapshot taken between two updates: wait for the settled one
            seen.append(fetch_client_counters(pushgateway, "run-a"))
            return seen[-1] == expected

        try:
            wait_for(both, timeout=10, what="counters of run-a")
        except AssertionError as err:
            raise AssertionError(f"the gateway never showed {expected}; last: {seen[-1:]}") from err
    finally:
        for pusher in (mine, other_process, other_run):
            pusher.close()
    assert mine.pushes >= 2
    assert mine.push_errors == 0
    # the final push: nothing is in flight once the load has ended
    (final,) = [r for r in fetch_client_counters(pushgateway, "run-a") if r.process == "0"]
    assert (final.completed, final.in_flight) == (3, 0)
    (b,) = fetch_client_counters(pushgateway, "run-b")
    assert b.in_flight == 0
    assert fetch_client_counters(pushgateway, "run-c") == []


def test_no_url_pushes_nothing() -> None:
    pusher = LivePusher(None, key("run-a"))
    pusher.start()
    pusher.on_sent()
    done(pusher, tokens=4)
    pusher.close()
    assert (pusher.completed, pusher.output_tokens, pusher.pushes, pusher.push_errors) == (
        1,
        4,
        0,
        0,
    )
    assert not [t for t in threading.enumerate() if t.name == PUSH_THREAD]


def push_thread() -> threading.Thread:
    """The one running pusher's thread, to see that closing it ends it."""
    (thread,) = [t for t in threading.enumerate() if t.name == PUSH_THREAD]
    return thread


def test_dead_gateway_warns_once_and_never_raises(capfd: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    pusher = LivePusher(url, key("run-a"), interval_s=0.05, timeout_s=0.5)
    pusher.start()
    thread = push_thread()
    wait_for(lambda: pusher.push_errors >= 3, timeout=10, what="three failed pushes")
    pusher.on_sent()
    done(pusher, tokens=1)
    pusher.close()
    # the last push to the dead gateway ends at its timeout and the thread with it
    wait_for(lambda: not thread.is_alive(), 30, "the push thread to end")
    err = capfd.readouterr().err
    assert err.count("cannot push live client counters") == 1
    assert url in err
    assert pusher.pushes == 0
    assert pusher.completed == 1


@pytest.mark.slow
def test_pushing_to_a_hanging_gateway_does_not_slow_the_event_loop(silent_server: str) -> None:
    """Each push to this gateway waits its whole timeout: on the event loop that would stall it
    for 0.4 s at a time. The loop's worst lateness must stay far below that."""
    pusher = LivePusher(silent_server, key("run-a"), interval_s=0.05, timeout_s=0.4)

    async def lateness(duration_s: float) -> float:
        worst = 0.0
        end = time.perf_counter() + duration_s
        while time.perf_counter() < end:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            pusher.on_sent()
            done(pusher, tokens=1)
            worst = max(worst, time.perf_counter() - before - 0.005)
        return worst

    alone = asyncio.run(lateness(0.5))  # this machine's own lateness, without pushes
    pusher.start()
    thread = push_thread()
    try:
        worst = asyncio.run(lateness(1.5))
    finally:
        pusher.close()
    assert pusher.push_errors >= 3  # pushes did run (and time out) meanwhile
    stall = worst - alone
    assert stall < pusher.timeout_s / 2, f"event loop stalled {stall * 1000:.0f} ms by pushes"
    wait_for(lambda: not thread.is_alive(), 30, "the push thread to end")
    assert pusher.completed > 50


def test_load_process_pushes_its_counters(tmp_path: Path, pushgateway: str) -> None:
    with StreamingServer() as server:
        spec = load_spec(
            tmp_path,
            level=2,
            base_url=server.url,
            model="tiny",
            records_path=str(tmp_path / "records" / "p0003.jsonl"),
            progress_path=str(tmp_path / "progress" / "p0003.json"),
            requests=6,
            warmup_requests=2,
            timeout_s=5.0,
            dataset=DatasetSpec(input_tokens=16, output_tokens=8),
            node="n7",
            process=3,
            push_url=pushgateway,
            run_id="run-load",
        )
        outcome = run_load(spec)
    assert outcome["completed"] == 6
    (row,) = fetch_client_counters(pushgateway, "run-load")
    assert row == ClientCounters("chat", "concurrency=2", "n7", "3", 6, 0, 48, 0)


# -- reading and showing them -------------------------------------------------------------------


def test_parser_keeps_only_the_runs_client_samples() -> None:
    text = (
        "# TYPE aifactory_client_requests_completed_total counter\n"
        'aifactory_client_requests_completed_total{aif_run="r",client="c",level="l",'
        'node="n",process="2",job="aifactory_client"} 7\n'
        'aifactory_client_requests_completed_total{aif_run="other",client="c",level="l",'
        'node="n",process="2"} 99\n'
        "# TYPE aifactory_client_in_flight gauge\n"
        'aifactory_client_in_flight{aif_run="r",client="c",level="l",node="n",process="2"} 3\n'
        'push_time_seconds{aif_run="r",client="c",level="l",node="n",process="2"} 1.7e9\n'
        "go_goroutines 12\n"
    )
    assert parse_client_counters(text, "r") == [
        ClientCounters("c", "l", "n", "2", completed=7, in_flight=3)
    ]


def test_render_shows_rates_since_the_last_frame_and_a_total() -> None:
    before = [
        ClientCounters("chat", "rate=8", "n1", "0", 10, 0, 100, 2),
        ClientCounters("chat", "rate=8", "n2", "1", 20, 1, 200, 1),
    ]
    now = [
        ClientCounters("chat", "rate=8", "n1", "0", 30, 0, 300, 4),
        ClientCounters("chat", "rate=8", "n2", "1", 25, 2, 260, 0),
        ClientCounters("chat", "rate=8", "n3", "2", 5, 0, 50, 1),
    ]
    text = render_watch(now, {r.key: r for r in before}, 2.0, title="run x")
    lines = text.splitlines()
    assert lines[0] == "run x"
    assert lines[1].split() == [
        *("CLIENT", "LEVEL", "NODE", "PROCESS", "DONE", "FAILED", "TOKENS", "IN", "FLIGHT"),
        "REQ/S",
    ]
    assert lines[2].split() == ["chat", "rate=8", "n1", "0", "30", "0", "300", "4", "10.0"]
    assert lines[3].split() == ["chat", "rate=8", "n2", "1", "25", "2", "260", "0", "2.5"]
    assert lines[4].split() == ["chat", "rate=8", "n3", "2", "5", "0", "50", "1", "-"]
    assert lines[5].split() == ["total", "-", "-", "3", "60", "2", "610", "5", "12.5"]
    first = render_watch(now[:1])
    assert first.splitlines()[1].split()[-1] == "-"
    assert render_watch([], title="run x") == "run x\nno client counters yet"


def test_watch_reads_the_runs_pushgateway(
    tmp_path: Path, pushgateway: str, state_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    record = make_run(tmp_path)
    write_endpoints(record.root, MonitorEndpoints("prometheus", 1.0, pushgateway_url=pushgateway))
    pusher = LivePusher(pushgateway, key(record.run_id, 0), interval_s=0.1)
    stranger = LivePusher(pushgateway, key("another-run", 5), interval_s=0.1)
    pusher.on_sent()
    pusher.on_sent()
    done(pusher, tokens=16)
    stranger.on_sent()
    done(stranger, tokens=1)
    pusher.push()
    stranger.push()
    status = main(["status", record.run_id[:12], "--watch", "--count", "2", "--interval", "0.3"])
    out, err = capsys.readouterr()
    assert status == 0
    assert err == ""
    frames = out.split(f"run {record.run_id}  ")
    assert len(frames) == 3  # nothing before the first frame, then two frames
    rates = []
    for frame in frames[1:]:
        assert f"from pushgateway {pushgateway}" in frame
        row = table_row(frame, "chat", "0")
        assert row[:8] == ["chat", "concurrency=4", "n1", "0", "1", "0", "16", "1"]
        rates.append(row[8])
        # the other run's process is not shown
        assert len([line for line in frame.splitlines() if line.startswith("chat ")]) == 1
    assert rates == ["-", "0.0"]


def test_watch_falls_back_to_progress_files_and_says_so_once(
    tmp_path: Path, state_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    record = make_run(tmp_path)
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    write_endpoints(record.root, MonitorEndpoints("prometheus", 1.0, pushgateway_url=dead))
    for process, completed in ((0, 4), (1, 2)):
        progress = Progress(
            record.root / "progress" / "chat-concurrency-2" / f"p{process:04d}.json",
            client="chat",
            level_label="concurrency=2",
            process=process,
            total=10,
            duration_s=None,
        )
        for _ in range(completed + 1):
            progress.on_sent()
        for _ in range(completed):
            progress.on_done({"error": "", "output_tokens": 8, "ttft_ms": 5.0})
        progress.write()
    assert [r.in_flight for r in progress_counters(record.root)] == [1, 1]
    status = main(["status", record.run_id, "--watch", "--count", "2", "--interval", "0.1"])
    out, err = capsys.readouterr()
    assert status == 0
    assert err.count("note:") == 1
    assert f"pushgateway at {dead} does not answer" in err
    assert out.count("from progress files") == 2
    last = out.split("from progress files")[-1]
    assert table_row(last, "chat", "1") == [
        *("chat", "concurrency=2", "-", "1", "2", "0", "16", "1", "0.0")
    ]
    assert table_row(last, "total", "2")[4:] == ["6", "0", "48", "2", "0.0"]


def test_watch_ends_when_the_driver_is_gone(
    tmp_path: Path, state_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    driver = process_ref(proc.pid, "driver")
    proc.wait()
    record = make_run(tmp_path, driver=driver)
    started = time.monotonic()
    status = watch_run(record, 5.0, None, sys.stdout)
    out, err = capsys.readouterr()
    assert status == 0
    assert time.monotonic() - started < 3
    assert "the run has no pushgateway" in err
    assert "no client counters yet" in out
    assert out.rstrip().endswith(f"the driver of run {record.run_id} is gone")


def test_watch_usage_errors(state_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "latest", "--watch", "--json"]) == 2
    assert main(["status", "latest", "--watch", "--interval", "0"]) == 2
    assert "--watch and --json" in capsys.readouterr().err


def test_watch_without_runs_says_so(state_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--watch", "--count", "1"]) == 2
    assert "aifactory:" in capsys.readouterr().err
