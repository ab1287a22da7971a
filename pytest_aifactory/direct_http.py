"""HTTP inside a run goes straight to its target, never through a site proxy.

`http_proxy` and friends are meant for the outside world. A run's own traffic (health checks,
scrapes, pushes to its pushgateway, Prometheus queries, clients' requests) goes to services the
run knows by address: through a proxy it would be slower, timed wrongly, and would hand the
run's key to the proxy. Each library reads the proxy variables its own way, so each gets its
own switch: an opener without proxy handler for urllib (prometheus_client pushes through one
too), sessions that ignore the environment for requests (aiohttp's ignore it unless told),
and `no_proxy` for the hosts of a client process's targets, which the libraries of other
clients (httpx for Chroma, gRPC for Milvus and Triton) honour.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from http.client import HTTPResponse
from typing import Any
from urllib.parse import urlsplit

import requests

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")


def urlopen(request: str | urllib.request.Request, timeout: float) -> HTTPResponse:
    """`urllib.request.urlopen` without proxies."""
    response: HTTPResponse = _OPENER.open(request, timeout=timeout)
    return response


def session() -> requests.Session:
    """A requests session that ignores proxy variables (and `.netrc`, also meant for others)."""
    made = requests.Session()
    made.trust_env = False
    return made


def get(url: str, **kwargs: Any) -> requests.Response:
    """`requests.get` without proxies."""
    with session() as direct:
        return direct.get(url, **kwargs)


def push_handler(
    url: str,
    method: str,
    timeout: float | None,
    headers: Sequence[tuple[str, str]],
    data: bytes,
) -> Callable[[], None]:
    """A prometheus_client push handler (`push_to_gateway(..., handler=push_handler)`) that
    does what its default one does, without proxies."""

    def handle() -> None:
        request = urllib.request.Request(url, data=data, method=method)
        for name, value in headers:
            request.add_header(name, value)
        with _OPENER.open(request, timeout=timeout) as response:
            if response.status >= 400:
                raise OSError(f"error talking to pushgateway: {response.status}")

    return handle


def bypass_proxy_for(urls: Iterable[str | None]) -> None:
    """Add the hosts of `urls` to this process's `no_proxy`, for libraries that take no
    switch of their own; the process's other traffic still goes through the proxy."""
    hosts = [urlsplit(url if "//" in url else f"//{url}").hostname for url in urls if url]
    for variable in NO_PROXY_VARIABLES:
        listed = [h for h in os.environ.get(variable, "").split(",") if h.strip()]
        added = [h for h in hosts if h and h not in listed]
        if added:
            os.environ[variable] = ",".join([*listed, *dict.fromkeys(added)])
