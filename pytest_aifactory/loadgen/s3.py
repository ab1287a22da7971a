"""Client kind `s3`: a seeded mix of GET, PUT, LIST and DELETE against an S3-API object store.

Requests go out with aiohttp, signed with AWS Signature V4 by botocore (`s3_signing`), one
operation per measured request, drawn from the recipe's `mix` by a generator seeded from the
`s3` section's `seed` and the process, so a run repeats exactly.

Credentials: the per-run keys the `s3` service kind gives its clients, else (an `external`
service) `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` of the client job's environment.

Untimed setup: the bucket is created if missing; the objects GETs read are written unless
already there with the right content (a HEAD compares the ETag with the md5 of what the object
must hold), so later load levels, and other processes of the client, find them ready. Each
process walks the objects from its own starting point, so several processes write few objects
twice. Setup steps are kept as `phase="setup"` records; a failed setup does not stop the load:
its requests fail in turn, each as an error record with the server's own answer.

Measured (see docs/metrics.md): `latency_ms` from just before the request is written to the last
byte of the answer; for GETs `ttfb_ms` until the first byte of the body. Every GET body is
checked against its expected size and md5: a difference is an error (`ChecksumMismatch`),
never a success; a PUT whose ETag is not the md5 of what was sent is one too. LISTs must
return the GETs' objects. `bytes` is the object bytes moved (GET, PUT), `items` the keys a
LIST returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any, cast

import aiohttp
from yarl import URL

from pytest_aifactory.loadgen.kinds.s3 import S3Op, S3Options
from pytest_aifactory.loadgen.records import Clock
from pytest_aifactory.loadgen.runner import LoadDriver, SendFn
from pytest_aifactory.loadgen.s3_objects import (
    OPS,
    ObjectSet,
    Payload,
    SlotPool,
    key_part,
    parse_sizes,
    put_payloads,
)
from pytest_aifactory.loadgen.spec import LoadSpec

try:
    from pytest_aifactory.loadgen.s3_signing import EMPTY_SHA256, S3Credentials, Signer
except ImportError as err:  # pragma: no cover - only without the optional dependency
    raise ImportError(
        f"the s3 client needs botocore ({err}): pip install 'pytest-aifactory[s3]'"
    ) from err

KEEPALIVE_S = 2.0
"""Idle pooled connections are closed before servers do (uvicorn: 5 s), so a request never
goes out on a connection the server is closing."""
SETUP_PARALLEL = 4
SETUP_ATTEMPTS = 3
SETUP_FIRST_ID = -1
"""Setup records count down from here; measured requests count up from 0."""
ERROR_EXCERPT = 200
_XML_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")


@dataclass
class Exchange:
    """What one S3 request showed."""

    status: int | None = None
    error: str = ""
    bytes: int | None = None
    items: int | None = None
    first_byte_ns: int | None = None
    etag: str | None = None
    size: int | None = None


def s3_error(status: int, reason: str | None, body: bytes) -> str:
    """`HTTPError: 403 Forbidden: SignatureDoesNotMatch: ...` from an S3 XML error body."""
    code = _XML_CODE.search(body)
    message = _XML_MESSAGE.search(body)
    detail = ": ".join(m.group(1).decode("utf-8", "replace") for m in (code, message) if m)
    if not detail:
        detail = body[:ERROR_EXCERPT].decode("utf-8", "replace").strip()
    text = f"HTTPError: {status} {reason or ''}".rstrip()
    return f"{text}: {detail}"[:400] if detail else text


def _etag(value: str | None) -> str:
    return (value or "").strip().strip('"').lower()


class S3Requests:
    """One request of each kind, over a shared session, filled into an `Exchange`."""

    def __init__(self, session: aiohttp.ClientSession, signer: Signer, timeout_s: float) -> None:
        self.session = session
        self.signer = signer
        self.timeout_s = timeout_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def run(
        self, exchange: Exchange, action: Callable[[Exchange], Awaitable[None]]
    ) -> Exchange:
        """Run one request; whatever goes wrong ends as the exchange's error, never raised."""
        try:
            await action(exchange)
        except TimeoutError:
            exchange.error = f"Timeout: no complete answer within {self.timeout_s:g} s"
        except aiohttp.ClientPayloadError as err:
            exchange.error = f"StreamError: body broken: {err}"
        except (aiohttp.ClientError, OSError) as err:
            exchange.error = f"ConnectionError: {type(err).__name__}: {err}"
        return exchange

    async def _request(
        self,
        method: str,
        url: str,
        exchange: Exchange,
        payload: Payload | None = None,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        signed = self.signer.headers(
            method,
            url,
            payload.sha256_hex if payload else EMPTY_SHA256,
            headers,
        )
        response = await self.session.request(
            method,
            URL(url, encoded=True),
            headers=signed,
            data=payload.data if payload else None,
            timeout=self.timeout,
        )
        exchange.status = response.status
        return response

    async def create_bucket(self, exchange: Exchange, bucket: str) -> None:
        response = await self._request("PUT", self.signer.url(bucket), exchange)
        async with response:
            body = await response.read()
            if response.status >= 300 and not (
                response.status == 409 and b"BucketAlreadyOwnedByYou" in body
            ):
                exchange.error = s3_error(response.status, response.reason, body)

    async def head(self, exchange: Exchange, bucket: str, key: str) -> None:
        response = await self._request("HEAD", self.signer.url(bucket, key), exchange)
        async with response:
            await response.read()
            if response.status == 200:
                exchange.etag = _etag(response.headers.get("ETag"))
                exchange.size = response.content_length
            elif response.status != 404:
                exchange.error = s3_error(response.status, response.reason, b"")

    async def put(self, exchange: Exchange, bucket: str, key: str, payload: Payload) -> None:
        response = await self._request(
            "PUT",
            self.signer.url(bucket, key),
            exchange,
            payload,
            {"Content-MD5": payload.md5_b64},
        )
        async with response:
            body = await response.read()
            if response.status >= 300:
                exchange.error = s3_error(response.status, response.reason, body)
                return
            etag = _etag(response.headers.get("ETag"))
            if etag != payload.md5_hex:
                exchange.error = (
                    f"ChecksumMismatch: PUT {key}: ETag {etag or 'missing'} is not the md5 "
                    f"{payload.md5_hex} of the {len(payload.data)} bytes sent"
                )
                return
            exchange.bytes = len(payload.data)

    async def get(self, exchange: Exchange, bucket: str, key: str, size: int, md5: str) -> None:
        response = await self._request("GET", self.signer.url(bucket, key), exchange)
        async with response:
            if response.status != 200:
                body = await response.read()
                exchange.error = s3_error(response.status, response.reason, body)
                return
            hasher = hashlib.md5(usedforsecurity=False)
            received = 0
            async for chunk in response.content.iter_any():
                if exchange.first_byte_ns is None:
                    exchange.first_byte_ns = perf_counter_ns()
                hasher.update(chunk)
                received += len(chunk)
        exchange.bytes = received
        digest = hasher.hexdigest()
        if received != size or digest != md5:
            exchange.error = (
                f"ChecksumMismatch: GET {key}: {received} bytes with md5 {digest}, "
                f"expected {size} bytes with md5 {md5}"
            )

    async def list(
        self, exchange: Exchange, bucket: str, prefix: str, max_keys: int, at_least: int
    ) -> None:
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
        response = await self._request("GET", self.signer.url(bucket, query=query), exchange)
        async with response:
            body = await response.read()
        if response.status != 200:
            exchange.error = s3_error(response.status, response.reason, body)
            return
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as err:
            exchange.error = f"ListError: unreadable answer ({err}): {body[:ERROR_EXCERPT]!r}"
            return
        keys = [e.text or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Key"]
        exchange.items = len(keys)
        foreign = [k for k in keys if not k.startswith(prefix)]
        if foreign or not at_least <= len(keys) <= max_keys:
            exchange.error = (
                f"ListMismatch: LIST {prefix} returned {len(keys)} keys"
                + (f" ({len(foreign)} outside the prefix)" if foreign else "")
                + f", expected {at_least} to {max_keys}"
            )

    async def delete(self, exchange: Exchange, bucket: str, key: str) -> None:
        response = await self._request("DELETE", self.signer.url(bucket, key), exchange)
        async with response:
            body = await response.read()
            if response.status >= 300:
                exchange.error = s3_error(response.status, response.reason, body)


class S3Load:
    """Setup, then one operation of the mix per measured request."""

    def __init__(
        self,
        spec: LoadSpec,
        options: S3Options,
        requests: S3Requests,
        driver: LoadDriver,
    ) -> None:
        self.spec = spec
        self.options = options
        self.requests = requests
        self.driver = driver
        self.clock: Clock = driver.clock
        self.bucket = options.bucket
        sizes = parse_sizes(options.object_size)
        self.objects = ObjectSet(options.seed, options.objects, sizes)
        self.payloads = put_payloads(options.seed, sizes)
        self.slots = SlotPool(
            f"aifactory/put/{key_part(spec.client)}/{key_part(spec.node or 'node')}-{spec.process}/"
        )
        weighted = [(op, options.mix.get(cast(S3Op, op), 0.0)) for op in OPS]
        weighted = [(op, w) for op, w in weighted if w > 0]
        self.ops = [op for op, _ in weighted]
        self.cum_weights = list(itertools.accumulate(w for _, w in weighted))
        self.rng = random.Random(f"s3/{options.seed}/{spec.process}")
        self._setup_ids = itertools.count(SETUP_FIRST_ID, -1)
        self._puts = itertools.count()

    # -- setup ---------------------------------------------------------------------------------

    async def prepare(self) -> SendFn:
        created = await self._setup("CreateBucket", self.requests.create_bucket, self.bucket)
        count = len(self.objects)
        if created:
            start = self.spec.process * count // max(1, self.spec.processes)
            order = [(start + i) % count for i in range(count)]
            gate = asyncio.Semaphore(SETUP_PARALLEL)

            async def ensure(index: int) -> None:
                async with gate:
                    await self._ensure_object(index)

            await asyncio.gather(*(ensure(i) for i in order))
        else:  # the load runs anyway: each request shows the server's answer
            for index in range(count):
                self.objects.set_digest(index, self.objects.payload(index).md5_hex)
        return self.send

    async def _ensure_object(self, index: int) -> None:
        payload = self.objects.payload(index)
        self.objects.set_digest(index, payload.md5_hex)
        stored = self.objects.objects[index]
        head = await self._setup_record("HEAD", self.requests.head, self.bucket, stored.key)
        if not head.error and head.etag == payload.md5_hex and head.size == stored.size:
            return
        for _ in range(SETUP_ATTEMPTS):
            put = await self._setup_record(
                "PUT", self.requests.put, self.bucket, stored.key, payload
            )
            if not put.error or (put.status is not None and put.status < 500):
                return

    async def _setup(self, op: str, action: Callable[..., Awaitable[None]], *args: Any) -> bool:
        return not (await self._setup_record(op, action, *args)).error

    async def _setup_record(
        self, op: str, action: Callable[..., Awaitable[None]], *args: Any
    ) -> Exchange:
        request_id = next(self._setup_ids)
        now_ns = self.clock.now_ns()
        record = self.driver.new_record(request_id, "setup", now_ns)
        exchange, start_ns, end_ns = await self._timed(action, *args)
        self._fill(record, op, exchange, now_ns, start_ns, end_ns)
        assert self.driver.writer is not None
        self.driver.writer.add(record)
        return exchange

    # -- measured requests ---------------------------------------------------------------------

    async def send(self, record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
        op = self.rng.choices(self.ops, cum_weights=self.cum_weights)[0]
        if op == "GET":
            stored = self.objects.objects[self.rng.randrange(len(self.objects))]
            exchange, start_ns, end_ns = await self._timed(
                self.requests.get, self.bucket, stored.key, stored.size, stored.md5_hex
            )
        elif op == "PUT":
            payload = self.payloads[next(self._puts) % len(self.payloads)]
            slot = self.slots.for_put()
            try:
                exchange, start_ns, end_ns = await self._timed(
                    self.requests.put, self.bucket, self.slots.key(slot), payload
                )
            finally:
                self.slots.release(slot, written=True)
        elif op == "LIST":
            max_keys = self.options.list_max_keys
            exchange, start_ns, end_ns = await self._timed(
                self.requests.list,
                self.bucket,
                self.objects.prefix,
                max_keys,
                min(max_keys, len(self.objects)),
            )
        else:
            slot, _ = self.slots.for_delete()
            deleted = False
            try:
                exchange, start_ns, end_ns = await self._timed(
                    self.requests.delete, self.bucket, self.slots.key(slot)
                )
                deleted = not exchange.error
            finally:
                self.slots.release(slot, written=not deleted)
        return self._fill(record, op, exchange, scheduled_ns, start_ns, end_ns)

    async def _timed(
        self, action: Callable[..., Awaitable[None]], *args: Any
    ) -> tuple[Exchange, int, int]:
        exchange = Exchange()
        start_ns = perf_counter_ns()
        await self.requests.run(exchange, lambda x: action(x, *args))
        return exchange, start_ns, perf_counter_ns()

    def _fill(
        self,
        record: dict[str, Any],
        op: str,
        exchange: Exchange,
        scheduled_ns: int,
        start_ns: int,
        end_ns: int,
    ) -> dict[str, Any]:
        wall = self.clock.wall
        record["op"] = op
        record["send_ts"] = wall(start_ns)
        record["end_ts"] = wall(end_ns)
        record["queue_ms"] = max(0, start_ns - scheduled_ns) / 1e6
        record["latency_ms"] = (end_ns - start_ns) / 1e6
        if exchange.first_byte_ns is not None:
            record["ttfb_ms"] = (exchange.first_byte_ns - start_ns) / 1e6
        record["bytes"] = exchange.bytes
        record["items"] = exchange.items
        record["http_status"] = exchange.status
        record["error"] = exchange.error
        return record


async def run_s3(spec: LoadSpec) -> dict[str, Any]:
    """One process of an `s3` client: set up the bucket and objects, then drive the load."""
    options = S3Options.model_validate(spec.options)
    if not spec.base_url:
        raise ValueError("the s3 client needs a service: its endpoint is unknown")
    credentials = S3Credentials.find(spec.service_env, options.region)
    signer = Signer(spec.base_url, credentials)
    driver = LoadDriver(spec)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
        auto_decompress=False,
    ) as session:
        requests = S3Requests(session, signer, spec.timeout_s)
        load = S3Load(spec, options, requests, driver)
        return await driver.run(load.prepare)
