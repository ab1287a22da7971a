"""A small client of Prometheus's HTTP API: readiness, instant queries, raw samples.

Raw samples (a range selector evaluated at one instant) rather than `query_range`: a counter's
exact value before and after a test is what the server-vs-client cross-check needs, and step
interpolation would blur both ends.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pytest_aifactory import direct_http

DEFAULT_TIMEOUT_S = 5.0


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered with an error; the message says which."""


class PrometheusClient:
    """`headers`: the run's credentials (its Prometheus lets in no one else)."""

    def __init__(
        self,
        url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})

    def _request(self, url: str) -> urllib.request.Request:
        return urllib.request.Request(url, headers=self.headers)

    def ready(self) -> bool:
        try:
            with direct_http.urlopen(
                self._request(f"{self.url}/-/ready"), timeout=self.timeout_s
            ) as resp:
                return int(resp.status) == 200
        except (OSError, ValueError):
            return False

    def _get(self, path: str, params: dict[str, str]) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with direct_http.urlopen(
                self._request(f"{self.url}{path}?{query}"), timeout=self.timeout_s
            ) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            try:
                body = json.loads(err.read())
            except ValueError:
                raise PrometheusUnavailable(f"{self.url}: HTTP {err.code}") from None
        except (OSError, ValueError) as err:
            raise PrometheusUnavailable(f"{self.url}: {err}") from None
        if body.get("status") != "success":
            raise PrometheusUnavailable(
                f"{self.url}: {body.get('errorType', 'error')}: {body.get('error', body)}"
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result list (vector or matrix entries)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return list(self._get("/api/v1/query", params)["result"])

    def raw_samples(
        self, selector: str, start: float, end: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Every stored sample of `selector` with a timestamp in (start, end]."""
        window_ms = max(1, int((end - start) * 1000))
        result = self.query(f"{selector}[{window_ms}ms]", at=end)
        return [
            (entry["metric"], [(float(t), float(v)) for t, v in entry.get("values", [])])
            for entry in result
        ]

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])
