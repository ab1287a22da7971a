"""Scraping the run's targets from the driver itself, for machines without a Prometheus binary.

It reads the same file-based discovery folders Prometheus would, keeps only the catalogued
series and hands them out in the sample table's schema, so `metrics.parquet` looks the same
whichever collected it (only `origin` differs).
"""

from __future__ import annotations

import json
import re
import threading
import time
from array import array
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from prometheus_client.parser import text_string_to_metric_families

from pytest_aifactory import direct_http
from pytest_aifactory.cluster.rundir import secrets_dir_of
from pytest_aifactory.monitor.credentials import read_credentials, read_token
from pytest_aifactory.monitor.samples import empty_samples, normalize
from pytest_aifactory.monitor.series import (
    AUTH_LABEL,
    BASIC_AUTH,
    EXTERNAL_KIND,
    KIND_LABEL,
    NODE_LABEL,
    ROLE_LABEL,
    SERVICE_LABEL,
    Series,
)
from pytest_aifactory.monitor.targets import BEARER_AUTH, NO_AUTH, Target, read_targets

ORIGIN = "scrape"
MAX_PARALLEL_SCRAPES = 8
_KEY_COLUMNS = ("series", "metric", "source", "service", "node", "instance", "labels")


class _Catalogue:
    """The series one kind of target may expose, and a filter that keeps only their lines.

    A node exporter writes about a thousand lines of which a dozen are kept: parsing only
    those keeps the scraper cheap on a node that is busy serving the benchmark.
    """

    def __init__(self, series: Iterable[Series]) -> None:
        self.by_metric = {s.metric: s for s in series}
        names = sorted(self.by_metric, key=len, reverse=True)
        alternatives = "|".join(re.escape(name) for name in names)
        self._lines = re.compile(rf"^(?:{alternatives})[{{ \t].*$", re.MULTILINE) if names else None

    def catalogued_text(self, text: str) -> str:
        if self._lines is None:
            return ""
        return "\n".join(m.group(0) for m in self._lines.finditer(text)) + "\n"


class DirectScraper:
    """Scrapes every announced target every `interval_s` on a daemon thread.

    `series_by_role` maps a target's `aif_role` label (or, without one, its discovery group)
    to the series kept from it; a target whose role is not in the map is matched against all of
    them. Samples are kept as three flat arrays plus a table of distinct label sets.
    """

    def __init__(
        self,
        run_root: Path,
        series_by_role: Mapping[str, Iterable[Series]],
        interval_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> None:
        self.run_root = Path(run_root)
        self.interval_s = interval_s
        self.timeout_s = timeout_s if timeout_s is not None else max(interval_s, 1.0)
        by_role = {role: tuple(series) for role, series in series_by_role.items()}
        self._by_role = {role: _Catalogue(series) for role, series in by_role.items()}
        self._fallback = _Catalogue(s for series in by_role.values() for s in series)
        self.errors: dict[str, str] = {}
        """Per target URL, the last error met scraping it (kept after it recovers)."""
        self.failures: dict[str, int] = {}
        self.scrapes = 0
        """Passes over the targets started so far."""
        self._timestamps = array("d")
        self._values = array("d")
        self._keys = array("q")
        self._key_rows: list[tuple[str, ...]] = []
        self._key_index: dict[tuple[object, ...], int] = {}
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._auth = _bearer(secrets_dir_of(self.run_root) / "api_key")
        credentials = read_credentials(self.run_root)
        self._own_auth = credentials.header if credentials is not None else None
        """For the run's own programs (node exporters, the pushgateway)."""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="aifactory-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops after the pass under way (bounded by the scrape timeout)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=self.timeout_s + self.interval_s + 1.0)

    def _loop(self) -> None:
        with ThreadPoolExecutor(MAX_PARALLEL_SCRAPES, thread_name_prefix="aifactory-scrape") as ex:
            next_at = time.monotonic()
            while not self._stop.is_set():
                self._launch(ex)
                next_at += self.interval_s
                now = time.monotonic()
                if next_at < now:  # the thread was held up: skip the missed ticks
                    next_at = now + self.interval_s - (now - next_at) % self.interval_s
                self._stop.wait(next_at - now)

    # -- scraping -------------------------------------------------------------------------------

    def _launch(self, executor: ThreadPoolExecutor) -> None:
        """Start a scrape of every target announced now (targets appear while the run goes
        on), but of none whose last scrape is still waiting: like Prometheus's per-target
        loops, a hanging target skips its own ticks and holds up no other."""
        for target in read_targets(self.run_root):
            with self._lock:
                if target.url in self._busy:
                    continue
                self._busy.add(target.url)
            executor.submit(self._scrape, target)
        self.scrapes += 1

    def scrape_once(self) -> None:
        """Scrape every target now, one after the other (without the thread)."""
        for target in read_targets(self.run_root):
            self._scrape(target)
        self.scrapes += 1

    def _service_auth(self, target: Target) -> dict[str, str] | None:
        """The run's key goes to the servers the run started, never to a `kind: external`
        service: that one is someone else's, and the recipe gave it no key of ours. A
        service's exporter locked with the run's monitoring password gets that instead."""
        if target.labels.get(AUTH_LABEL) == BASIC_AUTH:
            return self._own_auth
        if target.labels.get(AUTH_LABEL) == BEARER_AUTH:  # a server's own token (MinIO's)
            token = read_token(self.run_root, target.labels.get(SERVICE_LABEL, ""))
            return {"Authorization": f"Bearer {token}"} if token else None
        return None if target.labels.get(KIND_LABEL) == EXTERNAL_KIND else self._auth

    def _scrape(self, target: Target) -> None:
        url = target.url
        started = time.time()
        try:
            headers = self._service_auth(target) if target.group == "services" else self._own_auth
            if target.labels.get(AUTH_LABEL) == NO_AUTH:  # a site's exporter: no secret of ours
                headers = None
            response = direct_http.get(url, timeout=self.timeout_s, headers=headers)
            response.raise_for_status()
            self._keep(target, started, response.text)
        except (requests.RequestException, ValueError) as err:
            self.failures[url] = self.failures.get(url, 0) + 1
            self.errors[url] = f"{type(err).__name__}: {err}"[:300]
        finally:
            with self._lock:
                self._busy.discard(url)

    def _catalogue(self, target: Target) -> _Catalogue:
        role = target.labels.get(ROLE_LABEL) or target.group
        return self._by_role.get(role, self._fallback)

    def _keep(self, target: Target, scraped_at: float, text: str) -> None:
        catalogue = self._catalogue(target)
        timestamps: list[float] = []
        values: list[float] = []
        keys: list[int] = []
        families = list(text_string_to_metric_families(catalogue.catalogued_text(text)))
        with self._lock:
            for family in families:
                for sample in family.samples:
                    series = catalogue.by_metric.get(sample.name)
                    if series is None:
                        continue
                    keys.append(self._key(series, target, sample.labels))
                    timestamps.append(
                        scraped_at if sample.timestamp is None else float(sample.timestamp)
                    )
                    values.append(float(sample.value))
            self._timestamps.extend(timestamps)
            self._values.extend(values)
            self._keys.extend(keys)

    def _key(self, series: Series, target: Target, sample_labels: dict[str, str]) -> int:
        """Index of the row's identity in the table of distinct ones (made on first sight)."""
        identity = (
            series.name,
            target.address,
            tuple(sorted(target.labels.items())),
            tuple(sorted(sample_labels.items())),
        )
        index = self._key_index.get(identity)
        if index is None:
            # as Prometheus keeps them: the target's labels win, and a service is only what
            # its own target says (nothing pushed to the gateway poses as one)
            labels = {**sample_labels, **target.labels}
            labels.pop(SERVICE_LABEL, None)
            service = target.labels.get(SERVICE_LABEL, "")
            node = labels.pop(NODE_LABEL, "")
            row = (
                series.name,
                series.metric,
                series.source,
                service,
                node,
                target.address,
                json.dumps(labels, sort_keys=True),
            )
            index = len(self._key_rows)
            self._key_rows.append(row)
            self._key_index[identity] = index
        return index

    # -- results --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._values)

    def samples(self, start: float | None = None, end: float | None = None) -> pd.DataFrame:
        """Samples taken in [start, end] (epoch seconds; open when None), in the sample
        table's schema; `test_id` is left to the caller, which knows the test windows."""
        with self._lock:
            timestamps = np.array(self._timestamps, dtype="float64")
            values = np.array(self._values, dtype="float64")
            keys = np.array(self._keys, dtype="int64")
            key_rows = list(self._key_rows)
        mask = np.ones(len(timestamps), dtype=bool)
        if start is not None:
            mask &= timestamps >= start
        if end is not None:
            mask &= timestamps <= end
        if not mask.any():
            return empty_samples()
        table = pd.DataFrame(key_rows, columns=list(_KEY_COLUMNS))
        frame = table.iloc[keys[mask]].reset_index(drop=True)
        frame["timestamp"] = timestamps[mask]
        frame["value"] = values[mask]
        frame["origin"] = ORIGIN
        return normalize(frame)


def _bearer(key_file: Path) -> dict[str, str] | None:
    """The run's API key as a header for its services (as Prometheus sends it)."""
    try:
        key = key_file.read_text().strip()
    except OSError:
        return None
    return {"Authorization": f"Bearer {key}"} if key else None
