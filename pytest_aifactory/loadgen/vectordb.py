"""Client kind `vectordb`: nearest-neighbour queries against Chroma, Milvus or FAISS, with recall.

Setup (untimed for the load, but measured): the dataset is built from the recipe's seed, stored
in batches (one `phase="setup"`, `op="insert"` record per batch, its vectors in `items`), the
index built where the engine has a separate step (one `op="index_build"` record), and each
query's exact top-k found by brute force over the same vectors. Then every request is one query
(`op="query"`), taken in turn from the query set, recorded with its latency and its recall@k
against the exact answer (docs/metrics.md).

The engine follows the client's service (chroma, milvus), is FAISS inside this process when the
client has none, or is named by `vectordb.engine` (an `external` service). With several
processes, the server collection is loaded once, by process 0, while the others wait for it in
the load's barrier folder and then query the same collection; when all have finished, process 0
drops it (unless `keep_collection`). FAISS indexes live in each process's memory, so every
process builds its own.

Calls into the engines block, so queries run in a thread pool as wide as the load's
concurrency (setup steps in a thread of their own); latency is timed inside the worker thread
around the call alone, and `queue_ms` shows any wait for a free thread. A FAISS query uses
`vectordb.threads` OpenMP threads (default 1: the load's concurrency runs queries side by side),
while loading uses FAISS's default of one per core.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from pytest_aifactory.atomic import write_json_atomic
from pytest_aifactory.loadgen.kinds.vectordb import VectorDbOptions
from pytest_aifactory.loadgen.runner import LoadDriver, SendFn
from pytest_aifactory.loadgen.spec import LoadSpec
from pytest_aifactory.loadgen.vector_datasets import (
    GroundTruth,
    VectorDataset,
    build_dataset,
    exact_top_k,
)
from pytest_aifactory.loadgen.vector_engines import (
    EngineError,
    IndexSettings,
    VectorEngine,
    limit_threads,
    open_engine,
)

SETUP_ID = 1_000_000_000
"""Request ids of setup records: insert batch b is SETUP_ID + b, the index build 2 * SETUP_ID
(measured requests count up from 0)."""
INDEX_BUILD_ID = 2 * SETUP_ID
RATE_MODE_THREADS = 64
"""Worker threads of a rate-mode load without max_concurrency."""
LOADED_MARK = "vectordb.loaded"
DONE_MARK = "vectordb.done"
POLL_S = 0.2
DROP_WAIT_S = 120.0
"""How long process 0 waits for the other processes to finish before dropping the collection;
after that the collection is left in place rather than pulled from under a slow process."""
ERROR_CHARS = 300
INDEX_FIELDS = {"index", "metric", "m", "ef_construction", "ef_search", "nlist", "nprobe"}
"""The options that decide what a collection holds and how it is indexed."""


class VectorLoadError(RuntimeError):
    """The collection could not be loaded, so no query can be measured."""


def engine_for(spec: LoadSpec, options: VectorDbOptions) -> str:
    """The engine to measure: `vectordb.engine`, else the service's kind, else FAISS."""
    if options.engine == "faiss" and spec.base_url:
        raise EngineError(
            f"client '{spec.client}': engine faiss runs inside the client job; remove the "
            "client's service or choose the service's engine"
        )
    if options.engine:
        return options.engine
    if not spec.base_url:
        return "faiss"
    if spec.service_kind in ("chroma", "milvus"):
        return spec.service_kind
    raise EngineError(
        f"client '{spec.client}': cannot tell which vector engine a service of kind "
        f"'{spec.service_kind or 'unknown'}' is; set vectordb.engine (chroma or milvus)"
    )


def _name_part(text: str, width: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:width] or "x"


def collection_name(spec: LoadSpec, options: VectorDbOptions, shared: bool) -> str:
    """The recipe's name; else, to reuse a collection, `aif_<client>_<hash>` with the hash of
    the dataset and index settings; else `aif_<client>_<level>_<hash>`, unique per run and
    level (the hash is of the load's barrier folder, the same for every process of the load).
    Made of characters Chroma and Milvus both accept. A process that does not share the
    collection gets its own (`_p<n>`)."""
    if options.collection:
        name = options.collection
    elif options.reuse_collection:
        # named by what is in it, so a collection is only ever reused for the same vectors
        content = {
            "dataset": dataclasses.asdict(spec.dataset),
            "index": options.model_dump(include=INDEX_FIELDS),
        }
        digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
        name = f"aif_{_name_part(spec.client, 60)}_{digest}"
    else:
        where = spec.barrier_dir or os.path.dirname(os.path.abspath(spec.records_path))
        digest = hashlib.sha1(f"{spec.run_id}|{where}".encode()).hexdigest()[:10]
        name = f"aif_{_name_part(spec.client, 60)}_{_name_part(spec.level_label, 40)}_{digest}"
    return name if shared or spec.processes <= 1 else f"{name}_p{spec.process}"


def index_settings(options: VectorDbOptions) -> IndexSettings:
    return IndexSettings(
        index=options.index,
        metric=options.metric,
        m=options.m,
        ef_construction=options.ef_construction,
        ef_search=options.ef_search,
        nlist=options.nlist,
        nprobe=options.nprobe,
    )


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:ERROR_CHARS]


def _read_mark(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not there yet, or being replaced
    return content if isinstance(content, dict) else None


class VectorLoad:
    """One process's share of a vectordb load level: setup, queries, clean-up."""

    def __init__(self, spec: LoadSpec, options: VectorDbOptions, driver: LoadDriver) -> None:
        self.spec = spec
        self.options = options
        self.driver = driver
        self.engine_name = engine_for(spec, options)
        in_process = self.engine_name == "faiss"
        self.shared = not in_process and spec.processes > 1 and bool(spec.barrier_dir)
        self.loader = not self.shared or spec.process == 0
        self.barrier = Path(spec.barrier_dir) if spec.barrier_dir else None
        self.collection = collection_name(spec, options, self.shared)
        self.k = spec.dataset.k
        self.pool = ThreadPoolExecutor(
            max_workers=self._workers(),
            thread_name_prefix=f"vectordb-{spec.process}",
            initializer=limit_threads,
            initargs=(self.engine_name, options.threads),
        )
        self.setup_pool = ThreadPoolExecutor(1, thread_name_prefix=f"vectordb-setup-{spec.process}")
        self.engine: VectorEngine | None = None
        self.dataset: VectorDataset | None = None
        self.truth: GroundTruth | None = None
        self.offset = 0
        self.reused = False

    def _workers(self) -> int:
        spec = self.spec
        if spec.mode == "concurrency":
            return max(1, int(spec.level))
        return spec.max_concurrency or RATE_MODE_THREADS

    async def _setup(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.setup_pool, function, *args)

    # -- setup ---------------------------------------------------------------------------------

    async def prepare(self) -> SendFn:
        dataset = self.dataset = await self._setup(build_dataset, self.spec.dataset)
        if self.loader:
            try:
                self.engine = await self._setup(self._open_engine, dataset.dim)
                await self._load(dataset)
            except BaseException as err:
                self._mark_loaded(error=_error_text(err))
                raise
            self._mark_loaded()
        else:
            await self._wait_until_loaded()
            self.engine = await self._setup(self._open_engine, dataset.dim)
            await self._setup(self.engine.open)
        self.truth = await self._setup(
            exact_top_k, dataset.base, dataset.queries, self.k, self.options.metric
        )
        # processes start at different queries, so they do not ask the same thing at once
        self.offset = self.spec.process * len(dataset.queries) // max(1, self.spec.processes)
        return self.send

    def _open_engine(self, dim: int) -> VectorEngine:
        try:
            return open_engine(
                self.engine_name,
                index_settings(self.options),
                dim,
                self.collection,
                self.spec.base_url,
            )
        except EngineError:
            raise
        except Exception as err:
            where = f" at {self.spec.base_url}" if self.spec.base_url else ""
            raise VectorLoadError(
                f"cannot connect to {self.engine_name}{where}: {_error_text(err)}"
            ) from err

    async def _load(self, dataset: VectorDataset) -> None:
        engine = self.engine
        assert engine is not None
        if self.options.reuse_collection:
            stored = await self._setup(engine.stored_count)
            if stored == dataset.count:
                await self._setup(engine.open)
                self.reused = True
                return
        await self._setup(engine.create)
        if engine.index_step == "before_insert":
            await self._timed_setup(
                INDEX_BUILD_ID, "index_build", dataset.count, engine.build_index, dataset.base
            )
        batch = self.options.batch_size
        for number, first in enumerate(range(0, dataset.count, batch)):
            vectors = dataset.base[first : first + batch]
            await self._timed_setup(
                SETUP_ID + number, "insert", len(vectors), engine.insert, first, vectors
            )
        if engine.index_step == "after_insert":
            await self._timed_setup(
                INDEX_BUILD_ID, "index_build", dataset.count, engine.build_index, dataset.base
            )

    async def _timed_setup(
        self, request_id: int, op: str, items: int, function: Any, *args: Any
    ) -> None:
        """Run one setup step in a worker thread and record it; a failure is recorded, then
        ends the setup (nothing can be queried without it)."""

        def timed() -> tuple[int, int, BaseException | None]:
            start = perf_counter_ns()
            try:
                function(*args)
            except Exception as err:
                return start, perf_counter_ns(), err
            return start, perf_counter_ns(), None

        clock = self.driver.clock
        scheduled = clock.now_ns()
        start, end, error = await self._setup(timed)
        record = self.driver.new_record(request_id, "setup", scheduled)
        record.update(
            op=op,
            items=items,
            send_ts=clock.wall(start),
            end_ts=clock.wall(end),
            latency_ms=(end - start) / 1e6,
            error=_error_text(error) if error else "",
            extra={"engine": self.engine_name, "collection": self.collection},
        )
        assert self.driver.writer is not None
        self.driver.writer.add(record)
        if error is not None:
            raise VectorLoadError(
                f"{self.engine_name} {op} failed: {_error_text(error)}"
            ) from error

    def _mark_loaded(self, error: str = "") -> None:
        if self.shared and self.barrier is not None:
            with contextlib.suppress(OSError):
                write_json_atomic(self.barrier / LOADED_MARK, {"ok": not error, "error": error})

    async def _wait_until_loaded(self) -> None:
        assert self.barrier is not None
        deadline = time.monotonic() + self.options.load_timeout_s
        while True:
            mark = _read_mark(self.barrier / LOADED_MARK)
            if mark is not None:
                if not mark.get("ok"):
                    raise VectorLoadError(
                        f"process 0 could not load collection '{self.collection}': "
                        f"{mark.get('error') or 'unknown error'}"
                    )
                return
            if time.monotonic() > deadline:
                raise VectorLoadError(
                    f"collection '{self.collection}' not loaded by process 0 within "
                    f"{self.options.load_timeout_s:g} s (vectordb.load_timeout_s)"
                )
            await asyncio.sleep(POLL_S)

    # -- queries -------------------------------------------------------------------------------

    async def send(self, record: dict[str, Any], scheduled_ns: int) -> dict[str, Any]:
        assert self.dataset is not None
        assert self.truth is not None
        assert self.engine is not None
        queries = self.dataset.queries
        index = (record["request_id"] + self.offset) % len(queries)
        engine, k = self.engine, self.k

        def query() -> tuple[int, int, list[int] | None, str]:
            start = perf_counter_ns()
            try:
                found = engine.search(queries[index], k)
            except Exception as err:
                return start, perf_counter_ns(), None, _error_text(err)
            return start, perf_counter_ns(), found, ""

        clock = self.driver.clock
        record["op"] = "query"
        try:
            start, end, found, error = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(self.pool, query),
                timeout=self.spec.timeout_s,
            )
        except TimeoutError:
            now = clock.now_ns()
            record["error"] = f"Timeout: no answer within {self.spec.timeout_s:g} s"
            record["end_ts"] = clock.wall(now)
            return record
        record["send_ts"] = clock.wall(start)
        record["end_ts"] = clock.wall(end)
        record["queue_ms"] = max(0, start - scheduled_ns) / 1e6
        record["latency_ms"] = (end - start) / 1e6
        record["error"] = error
        if found is not None:
            record["items"] = len(found)
            record["recall"] = self.truth.recall(index, found)
        return record

    # -- clean-up ------------------------------------------------------------------------------

    async def finish(self) -> None:
        """Say this process is done; process 0 then drops the collection once all are."""
        try:
            if self.shared and self.barrier is not None and not self.loader:
                with contextlib.suppress(OSError):
                    write_json_atomic(
                        self.barrier / f"{DONE_MARK}.{self.spec.process}", {"ok": True}
                    )
            keep = self.options.keep_collection or self.options.reuse_collection
            drop = self.engine is not None and self.loader and not keep
            if drop and await self._others_done():
                assert self.engine is not None
                with contextlib.suppress(Exception):
                    await self._setup(self.engine.drop)
            if self.engine is not None:
                with contextlib.suppress(Exception):
                    await self._setup(self.engine.close)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.setup_pool.shutdown(wait=False, cancel_futures=True)

    async def _others_done(self) -> bool:
        if not self.shared or self.barrier is None:
            return True
        others = [p for p in range(self.spec.processes) if p != self.spec.process]
        deadline = time.monotonic() + DROP_WAIT_S
        while True:
            waiting = [p for p in others if not (self.barrier / f"{DONE_MARK}.{p}").exists()]
            if not waiting:
                return True
            if time.monotonic() > deadline:
                warnings.warn(
                    f"collection '{self.collection}' kept: processes {waiting} still running "
                    f"after {DROP_WAIT_S:g} s",
                    stacklevel=2,
                )
                return False
            await asyncio.sleep(POLL_S)


async def run_vectordb(spec: LoadSpec) -> dict[str, Any]:
    """One process of a `vectordb` client: load (or wait for) the collection, then query it."""
    options = VectorDbOptions.model_validate(spec.options)
    driver = LoadDriver(spec)
    load = VectorLoad(spec, options, driver)
    try:
        outcome = await driver.run(load.prepare)
    finally:
        await load.finish()
    outcome.update(engine=load.engine_name, collection=load.collection, reused=load.reused)
    return outcome
