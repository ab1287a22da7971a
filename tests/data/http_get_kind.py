"""A client kind from outside the project, all in this one module: GETs of one path from any
HTTP server, timed. Registered through the `pytest_aifactory.kinds` entry point group, as
another package would register it (tests/e2e/test_new_kind.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter_ns
from typing import Any

import aiohttp
from pydantic import PositiveInt

from pytest_aifactory import ClientKind, Headline, KindOptions, LoadDriver, LoadSpec, metric


class HttpGetOptions(KindOptions):
    """`path`: what every request GETs; `expect_bytes`: the body's size, when it is known."""

    path: str = "/"
    expect_bytes: PositiveInt | None = None


async def run_http_get(spec: LoadSpec) -> dict[str, Any]:
    """One process of an `http_get` client."""
    options = HttpGetOptions(**spec.options)
    url = spec.base_url.rstrip("/") + options.path
    driver = LoadDriver(spec)
    sessions: list[aiohttp.ClientSession] = []

    async def prepare() -> Callable[[dict[str, Any], int], Awaitable[dict[str, Any]]]:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=spec.timeout_s))
        sessions.append(session)

        async def send(record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
            start_ns = perf_counter_ns()
            error, status, size = "", None, 0
            try:
                async with session.get(url) as response:
                    status, size = response.status, len(await response.read())
                if status != 200:
                    error = f"HTTPError: {status}"
                elif options.expect_bytes is not None and size != options.expect_bytes:
                    error = f"BadResponse: {size} bytes, expected {options.expect_bytes}"
            except (aiohttp.ClientError, TimeoutError) as err:
                error = f"{type(err).__name__}: {err}"
            end_ns = perf_counter_ns()
            record.update(
                op="get",
                send_ts=driver.clock.wall(start_ns),
                end_ts=driver.clock.wall(end_ns),
                latency_ms=(end_ns - start_ns) / 1e6,
                queue_ms=max(0, start_ns - scheduled_ns) / 1e6,
                http_status=status,
                error=error,
                bytes=size,
            )
            return record

        return send

    try:
        return await driver.run(prepare)
    finally:
        for session in sessions:
            await session.close()


CLIENT_KIND = ClientKind(
    name="http_get",
    description="GETs one path from an HTTP server",
    load=f"{__name__}:run_http_get",
    summarize="pytest_aifactory.metrics.operations:summarize_operations",
    headline=Headline("gets_s", "GET/s", "latency_ms", "latency"),
    throughput_metric="gets_s",
    options=HttpGetOptions,
    metrics=(metric("gets_s", "GET/s", True, False, "http_get", "successful GETs per second"),),
)
