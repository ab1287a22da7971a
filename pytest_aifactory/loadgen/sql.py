"""`kind: sql`: pgbench's transactions against a PostgreSQL service, timed one by one.

Two mixes, as pgbench's built-in scripts: `tpcb` (TPC-B-like: update an account, read its
balance, update a teller and a branch, append to the history, in one transaction) and
`read-only` (one SELECT of an account by primary key, pgbench -S). The tables are pgbench's own
(`pgbench_accounts`...), so pgbench itself can be run against the same database to compare.

Untimed setup: the tables are created and loaded once per database and scale; when several
processes start together one loads (under an advisory lock) while the others wait and then find
the data there. Then one connection is opened per concurrent worker (rate mode: per
`max_concurrency`, else `RATE_CONNECTIONS`); a request waiting for a free connection shows the
wait as `queue_ms`. Each measured request is one transaction: `op` is `tpcb` or `point`,
`latency_ms` runs from its first statement sent to its commit answered. A failed transaction
(a serialization failure, a deadlock, a statement timeout, a lost connection) is a record with
`error` set; a lost connection is opened again before the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import psycopg

from pytest_aifactory.loadgen.kinds.sql import SqlOptions
from pytest_aifactory.loadgen.runner import LoadDriver, SendFn

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.spec import LoadSpec

USER_ENV = "AIFACTORY_PG_USER"
PASSWORD_ENV = "AIFACTORY_PG_PASSWORD"
DATABASE_ENV = "AIFACTORY_PG_DATABASE"
"""The names the `postgres` service gives its clients (`ServicePlan.client_env`)."""

ACCOUNTS_PER_SCALE = 100_000
TELLERS_PER_SCALE = 10
RATE_CONNECTIONS = 16
"""Connections of a rate-mode load without `max_concurrency`."""
LOAD_LOCK = 0x41494653514C  # "AIFSQL": the advisory lock the loading process holds
LOAD_REQUEST_ID = -1
"""Request id of the setup record of the data load (measured requests count up from 0)."""
STARTING_UP_WAIT_S = 30.0

SCHEMA = (
    "CREATE TABLE pgbench_branches (bid int NOT NULL, bbalance int, filler char(88))",
    "CREATE TABLE pgbench_tellers (tid int NOT NULL, bid int, tbalance int, filler char(84))",
    "CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84))",
    "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, "
    "filler char(22))",
    "CREATE TABLE aifactory_sql_dataset (scale int NOT NULL, loaded_at timestamptz NOT NULL)",
)
TABLES = ("pgbench_branches", "pgbench_tellers", "pgbench_accounts", "pgbench_history")
FILL = (
    "INSERT INTO pgbench_branches (bid, bbalance) SELECT b, 0 FROM generate_series(1, %(scale)s) b",
    "INSERT INTO pgbench_tellers (tid, bid, tbalance) "
    "SELECT t, (t - 1) / %(tellers)s + 1, 0 FROM generate_series(1, %(scale)s * %(tellers)s) t",
    "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) "
    "SELECT a, (a - 1) / %(accounts)s + 1, 0, '' "
    "FROM generate_series(1, %(scale)s * %(accounts)s) a",
    "ALTER TABLE pgbench_branches ADD PRIMARY KEY (bid)",
    "ALTER TABLE pgbench_tellers ADD PRIMARY KEY (tid)",
    "ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid)",
    "INSERT INTO aifactory_sql_dataset (scale, loaded_at) VALUES (%(scale)s, now())",
)

UPDATE_ACCOUNT = "UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s"
SELECT_ACCOUNT = "SELECT abalance FROM pgbench_accounts WHERE aid = %s"
UPDATE_TELLER = "UPDATE pgbench_tellers SET tbalance = tbalance + %s WHERE tid = %s"
UPDATE_BRANCH = "UPDATE pgbench_branches SET bbalance = bbalance + %s WHERE bid = %s"
INSERT_HISTORY = (
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES (%s, %s, %s, %s, CURRENT_TIMESTAMP)"
)

OPS = {"tpcb": "tpcb", "read-only": "point"}
"""The record `op` of each mix's transaction."""


@dataclass(frozen=True)
class Target:
    """Where the database answers and who we are to it."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    statement_timeout_ms: int

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def target_of(spec: LoadSpec) -> Target:
    """The service's address from `base_url`, its credentials from `service_env`."""
    if not spec.base_url:
        raise ValueError(f"client '{spec.client}': kind sql needs a service (a postgres one)")
    url = urlsplit(spec.base_url)
    if not url.hostname or not url.port:
        raise ValueError(f"client '{spec.client}': cannot read host:port from {spec.base_url!r}")
    env = spec.service_env
    missing = [name for name in (USER_ENV, PASSWORD_ENV) if not env.get(name)]
    if missing:
        raise ValueError(
            f"client '{spec.client}': the service gave no {' or '.join(missing)} "
            f"(kind sql needs a service of kind postgres, got {spec.service_kind or 'none'!r})"
        )
    return Target(
        host=url.hostname,
        port=url.port,
        user=env[USER_ENV],
        password=env[PASSWORD_ENV],
        dbname=env.get(DATABASE_ENV) or env[USER_ENV],
        statement_timeout_ms=max(1, int(spec.timeout_s * 1000)),
    )


class SqlConnectError(ConnectionError):
    """The database refused us or cannot be reached (the message says which, never the
    password)."""


async def connect(target: Target, timed: bool = True) -> psycopg.AsyncConnection[Any]:
    """A connection, waiting out a server that is still starting up. `timed`: its statements
    are cancelled by the server after the load's per-request timeout (not the data load's,
    which may take long, nor its wait for another process's load)."""
    options = f"-c statement_timeout={target.statement_timeout_ms}" if timed else ""
    deadline = time.monotonic() + STARTING_UP_WAIT_S
    while True:
        try:
            return await psycopg.AsyncConnection.connect(
                host=target.host,
                port=target.port,
                user=target.user,
                password=target.password,
                dbname=target.dbname,
                autocommit=True,
                connect_timeout=10,
                application_name="aifactory-sql",
                options=options,
            )
        except psycopg.OperationalError as err:
            text = str(err).strip()
            if "starting up" in text and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                continue
            raise SqlConnectError(f"cannot connect to {target.describe()}: {text}") from None


async def ensure_loaded(conn: psycopg.AsyncConnection[Any], scale: int) -> tuple[float, int] | None:
    """Create and fill the tables unless this scale is already there.

    Returns (seconds, accounts) when this call loaded them, None when they were there. The
    advisory lock makes processes that start together load once: the first holds it while it
    loads, the others wait on it and then find the data. The load is one transaction, so a
    process killed half-way leaves nothing that looks loaded.
    """
    await conn.execute("SELECT pg_advisory_lock(%s)", (LOAD_LOCK,))
    try:
        row = await (await conn.execute("SELECT to_regclass('aifactory_sql_dataset')")).fetchone()
        if row is not None and row[0] is not None:
            found = await (await conn.execute("SELECT scale FROM aifactory_sql_dataset")).fetchall()
            if [r[0] for r in found] == [scale]:
                return None
        started = time.perf_counter()
        params = {"scale": scale, "accounts": ACCOUNTS_PER_SCALE, "tellers": TELLERS_PER_SCALE}
        async with conn.transaction():
            await conn.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)}, aifactory_sql_dataset")
            for statement in SCHEMA:
                await conn.execute(statement)
            for statement in FILL:
                await conn.execute(statement, params)
        for table in TABLES:
            await conn.execute(f"VACUUM ANALYZE {table}")
        return time.perf_counter() - started, scale * ACCOUNTS_PER_SCALE
    finally:
        with contextlib.suppress(psycopg.Error):  # a lost connection has let go of it already
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LOAD_LOCK,))


class Transactions:
    """pgbench's two scripts over a pool of connections, one transaction per request."""

    def __init__(
        self,
        driver: LoadDriver,
        target: Target,
        options: SqlOptions,
        connections: list[psycopg.AsyncConnection[Any]],
    ) -> None:
        self.driver = driver
        self.target = target
        self.scale = options.scale
        self.op = OPS[options.mix]
        self.body = self._tpcb if options.mix == "tpcb" else self._point
        spec = driver.spec
        self.rng = random.Random(spec.seed * 1_000_003 + spec.process)
        self.pool: asyncio.Queue[psycopg.AsyncConnection[Any] | None] = asyncio.Queue()
        for conn in connections:
            self.pool.put_nowait(conn)
        self.connections = connections

    async def send(self, record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
        clock = self.driver.clock
        record["op"] = self.op
        conn = await self.pool.get()
        try:
            if conn is None or conn.closed:
                conn = await connect(self.target)
                self.connections.append(conn)
            start_ns = clock.now_ns()
            try:
                await self.body(conn)
            except psycopg.Error as err:
                record["error"] = _error_text(err)
            end_ns = clock.now_ns()
        except SqlConnectError as err:
            record["error"] = f"ConnectionError: {err}"
            start_ns = end_ns = clock.now_ns()
            conn = None
        finally:
            self.pool.put_nowait(None if conn is None or conn.closed else conn)
        record["send_ts"] = clock.wall(start_ns)
        record["end_ts"] = clock.wall(end_ns)
        record["queue_ms"] = max(0, start_ns - scheduled_ns) / 1e6
        record["latency_ms"] = (end_ns - start_ns) / 1e6
        return record

    async def _tpcb(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rng, scale = self.rng, self.scale
        aid = rng.randint(1, ACCOUNTS_PER_SCALE * scale)
        bid = rng.randint(1, scale)
        tid = rng.randint(1, TELLERS_PER_SCALE * scale)
        delta = rng.randint(-5000, 5000)
        async with conn.transaction():
            await conn.execute(UPDATE_ACCOUNT, (delta, aid))
            cursor = await conn.execute(SELECT_ACCOUNT, (aid,))
            await cursor.fetchone()
            await conn.execute(UPDATE_TELLER, (delta, tid))
            await conn.execute(UPDATE_BRANCH, (delta, bid))
            await conn.execute(INSERT_HISTORY, (tid, bid, aid, delta))

    async def _point(self, conn: psycopg.AsyncConnection[Any]) -> None:
        aid = self.rng.randint(1, ACCOUNTS_PER_SCALE * self.scale)
        cursor = await conn.execute(SELECT_ACCOUNT, (aid,))
        if await cursor.fetchone() is None:
            raise psycopg.DataError(f"account {aid} not found")

    async def close(self) -> None:
        for conn in self.connections:
            if not conn.closed:
                await conn.close()


def _error_text(err: psycopg.Error) -> str:
    """`SerializationFailure: could not serialize...`, `QueryCanceled: canceling statement due
    to statement timeout`, `OperationalError: server closed the connection...`."""
    text = " ".join(str(err).split()) or getattr(err, "sqlstate", None) or ""
    return f"{type(err).__name__}: {text}"[:300]


def connections_for(spec: LoadSpec) -> int:
    if spec.mode == "concurrency":
        return max(1, int(spec.level))
    return spec.max_concurrency or RATE_CONNECTIONS


async def open_all(target: Target, spec: LoadSpec) -> list[psycopg.AsyncConnection[Any]]:
    """The workers' connections, opened together; none is left open if one fails."""
    count = connections_for(spec)
    results = await asyncio.gather(*(connect(target) for _ in range(count)), return_exceptions=True)
    conns = [r for r in results if isinstance(r, psycopg.AsyncConnection)]
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        for conn in conns:
            await conn.close()
        raise failure
    return conns


async def run_sql(spec: LoadSpec) -> dict[str, Any]:
    """One process of a `sql` client: load the tables if needed, connect, drive the load."""
    options = SqlOptions(**spec.options)
    target = target_of(spec)
    driver = LoadDriver(spec)
    opened: list[Transactions] = []

    async def prepare() -> SendFn:
        admin = await connect(target, timed=False)
        try:
            loaded = await ensure_loaded(admin, options.scale)
        finally:
            await admin.close()
        if loaded is not None:
            seconds, accounts = loaded
            now_ns = driver.clock.now_ns()
            record = driver.new_record(LOAD_REQUEST_ID, "setup", now_ns)
            record.update(
                op="load",
                items=accounts,
                latency_ms=seconds * 1000,
                send_ts=driver.clock.wall(now_ns - int(seconds * 1e9)),
                end_ts=driver.clock.wall(now_ns),
                extra={"scale": options.scale},
            )
            assert driver.writer is not None
            driver.writer.add(record)
        transactions = Transactions(driver, target, options, await open_all(target, spec))
        opened.append(transactions)
        return transactions.send

    try:
        return await driver.run(prepare)
    finally:
        for transactions in opened:
            await transactions.close()
