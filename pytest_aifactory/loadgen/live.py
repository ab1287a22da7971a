"""Live client counters: pushed by each load process to the run's pushgateway, read back by
`aifactory status --watch`.

Records only reach the driver when a load level ends; these counters show a running load from
anywhere (a login node, Grafana) while it runs. Pushing happens on a background thread with a
short timeout: a slow or dead gateway (Prometheus stopped mid-run) must never slow or fail the
load it reports on.
"""

from __future__ import annotations

import base64
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from pytest_aifactory import direct_http
from pytest_aifactory.loadgen.progress import read_progress
from pytest_aifactory.monitor.credentials import USER as MONITOR_USER
from pytest_aifactory.monitor.series import CLIENT_GROUP_LABELS, CLIENT_SERIES, RUN_LABEL

PUSH_EVERY_S = 1.0
PUSH_TIMEOUT_S = 1.0
CLIENT_JOB = "aifactory_client"
"""The pushgateway `job` every load process pushes under; the grouping key tells them apart."""

_COMPLETED, _FAILED, _TOKENS, _IN_FLIGHT = (series.metric for series in CLIENT_SERIES)


class LivePusher:
    """The counters of one load process and the thread that pushes them.

    The event loop only bumps integers (`on_sent`, `on_done`); the pushing thread reads them,
    so the loop never waits on the network. With no gateway URL nothing is pushed.
    """

    def __init__(
        self,
        url: str | None,
        grouping_key: dict[str, str],
        *,
        interval_s: float = PUSH_EVERY_S,
        timeout_s: float = PUSH_TIMEOUT_S,
        password_file: str | None = None,
    ) -> None:
        """`password_file`: the run's monitoring password (its gateway takes no other push)."""
        self.url = url
        self.password_file = password_file
        self.grouping_key = dict(grouping_key)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.completed = 0
        self.failed = 0
        self.output_tokens = 0
        self.in_flight = 0
        self.pushes = 0
        """Pushes the gateway accepted."""
        self.push_errors = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Counters(self))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    @classmethod
    def for_load(cls, spec: Any, node: str, **options: Any) -> LivePusher:
        """The pusher of one load process (`spec` is its `LoadSpec`)."""
        values = (spec.run_id, spec.client, spec.level_label, node, str(spec.process))
        key = dict(zip(CLIENT_GROUP_LABELS, values, strict=True))
        return cls(spec.push_url, key, password_file=spec.push_password_file, **options)

    # -- the event loop's side: plain integer updates -------------------------------------------

    def on_sent(self) -> None:
        self.in_flight += 1

    def on_done(self, record: dict[str, Any]) -> None:
        self.in_flight -= 1
        if record.get("error"):
            self.failed += 1
        else:
            self.completed += 1
            self.output_tokens += int(record.get("output_tokens") or 0)

    # -- the pushing thread ---------------------------------------------------------------------

    def start(self) -> None:
        if self.url is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="aifactory-live-push", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Push the final values and stop. Waits at most for one push under way and the final
        one, each bounded by the timeout, so a dead gateway cannot hold the process."""
        self.in_flight = 0  # the load is over: whatever was cancelled is no longer in flight
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=2 * self.timeout_s + 0.2)

    def push(self) -> bool:
        """One push; never raises. The first failure is said once on stderr, later ones are
        counted only (the gateway may come back)."""
        assert self.url is not None
        try:
            push_to_gateway(
                self.url,
                job=CLIENT_JOB,
                registry=self.registry,
                grouping_key=self.grouping_key,
                timeout=self.timeout_s,
                handler=self._handler(),
            )
        except Exception as err:
            self.push_errors += 1
            if not self._warned:
                self._warned = True
                print(
                    f"aifactory: cannot push live client counters to {self.url} ({err}); "
                    "the load goes on, retrying quietly",
                    file=sys.stderr,
                    flush=True,
                )
            return False
        self.pushes += 1
        return True

    def _handler(self) -> Callable[..., Callable[[], None]]:
        """Pushes go straight to the gateway (never through a proxy), with the run's
        credentials where it has them."""
        if self.password_file is None:
            return direct_http.push_handler
        auth = basic_auth_header(self.password_file)

        def handler(
            url: str, method: str, timeout: float | None, headers: Any, data: bytes
        ) -> Callable[[], None]:
            return direct_http.push_handler(url, method, timeout, [*headers, auth], data)

        return handler

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.push()
            self._stop.wait(self.interval_s)
        self.push()


class _Counters:
    """Exposes the pusher's integers as the catalogue's client series (no `_created` samples,
    which a pushgateway would only keep as clutter)."""

    def __init__(self, pusher: LivePusher) -> None:
        self.pusher = pusher

    def collect(self) -> Iterator[Metric]:
        p = self.pusher
        values = {
            _COMPLETED: p.completed,
            _FAILED: p.failed,
            _TOKENS: p.output_tokens,
            _IN_FLIGHT: p.in_flight,
        }
        for series in CLIENT_SERIES:
            family = CounterMetricFamily if series.type == "counter" else GaugeMetricFamily
            yield family(series.metric, series.help, value=values[series.metric])


# -- reading them back ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCounters:
    """One load process's counters, from the pushgateway or from its progress file."""

    client: str
    level: str
    node: str
    process: str
    completed: int = 0
    failed: int = 0
    output_tokens: int = 0
    in_flight: int = 0

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.client, self.level, self.node, self.process)


_FIELDS = {
    _COMPLETED: "completed",
    _FAILED: "failed",
    _TOKENS: "output_tokens",
    _IN_FLIGHT: "in_flight",
}


def parse_client_counters(text: str, run_id: str) -> list[ClientCounters]:
    """The client counters of one run in a pushgateway's `/metrics` text, one per process."""
    found: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = _FIELDS.get(sample.name)
            if field is None or sample.labels.get(RUN_LABEL) != run_id:
                continue
            labels = sample.labels
            key = (
                labels.get("client", ""),
                labels.get("level", ""),
                labels.get("node", ""),
                labels.get("process", ""),
            )
            found.setdefault(key, {})[field] = int(sample.value)
    rows = [ClientCounters(*key, **values) for key, values in found.items()]
    return sorted(rows, key=_order)


def basic_auth_header(password_file: str) -> tuple[str, str]:
    """The run's monitoring credentials as a header (read each time: a pusher outlives no
    run, and the file is small)."""
    password = Path(password_file).read_text().strip()
    token = base64.b64encode(f"{MONITOR_USER}:{password}".encode()).decode()
    return "Authorization", f"Basic {token}"


def fetch_client_counters(
    pushgateway_url: str,
    run_id: str,
    timeout_s: float = PUSH_TIMEOUT_S,
    headers: dict[str, str] | None = None,
) -> list[ClientCounters]:
    """Raises `requests.RequestException` when the gateway does not answer. `headers`: the
    run's credentials."""
    response = direct_http.get(
        pushgateway_url.rstrip("/") + "/metrics", timeout=timeout_s, headers=headers
    )
    response.raise_for_status()
    return parse_client_counters(response.text, run_id)


def progress_counters(run_root: Path) -> list[ClientCounters]:
    """The same counters from the run's progress files, for runs without a pushgateway: no
    node is known there, and in flight is what was sent and has not ended."""
    rows = []
    for path in _progress_files(run_root):
        snapshot = read_progress([path])
        if not snapshot:
            continue
        completed = int(snapshot["completed"])
        failed = int(snapshot["failed"])
        in_flight = 0 if snapshot["done"] else max(0, int(snapshot["sent"]) - completed - failed)
        rows.append(
            ClientCounters(
                client=str(snapshot.get("client") or path.parent.name),
                level=str(snapshot.get("level_label") or ""),
                node="",
                process=_process_of(path),
                completed=completed,
                failed=failed,
                output_tokens=int(snapshot["output_tokens"]),
                in_flight=in_flight,
            )
        )
    return sorted(rows, key=_order)


def _progress_files(run_root: Path) -> Iterable[Path]:
    return sorted((run_root / "progress").glob("*/p*.json"))


def _process_of(path: Path) -> str:
    """`p0003.json` -> `3`, as the pushgateway's `process` label says it."""
    digits = path.stem.removeprefix("p")
    return str(int(digits)) if digits.isdigit() else path.stem


def _order(row: ClientCounters) -> tuple[str, str, str, int, str]:
    number = int(row.process) if row.process.isdigit() else -1
    return (row.client, row.level, row.node, number, row.process)
