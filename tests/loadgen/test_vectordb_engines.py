"""The vector engines against real stores: FAISS in this process, a Chroma server and a Milvus
Lite server on 127.0.0.1 (started here, stopped by PID)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.loadgen.vector_datasets import build_dataset, exact_top_k
from pytest_aifactory.loadgen.vector_engines import (
    EngineError,
    IndexSettings,
    VectorEngine,
    open_engine,
)
from tests.components import require_component
from tests.helpers import answers, wait_for

BIN = Path(sys.executable).parent


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def _server(argv: list[str], ready: Callable[[], bool], what: str) -> Iterator[None]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready, 60, f"{what} ready")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_component("chromadb")
    port = free_port("127.0.0.1")
    data = tmp_path_factory.mktemp("chroma")
    argv = [str(BIN / "chroma"), "run", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with _server(
        [*argv, "--path", str(data)], lambda: answers(url + "/api/v2/heartbeat"), "chroma"
    ):
        yield url


@pytest.fixture(scope="module")
def milvus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_component("milvus-lite")
    port = free_port("127.0.0.1")
    data = tmp_path_factory.mktemp("milvus")
    argv = [str(BIN / "milvus-lite"), "server", "--data-dir", str(data), "--host", "127.0.0.1"]
    with _server([*argv, "--port", str(port)], lambda: _accepts(port), "milvus"):
        yield f"http://127.0.0.1:{port}"


DATA = build_dataset(DatasetSpec(kind="clustered", dim=16, count=1500, queries=40, clusters=8))
K = 10


def _loaded(engine: VectorEngine) -> VectorEngine:
    engine.create()
    if engine.index_step == "before_insert":
        engine.build_index(DATA.base)
    for first in range(0, DATA.count, 500):
        engine.insert(first, DATA.base[first : first + 500])
    if engine.index_step == "after_insert":
        engine.build_index(DATA.base)
    return engine


def _mean_recall(engine: VectorEngine, metric: str) -> float:
    truth = exact_top_k(DATA.base, DATA.queries, K, metric)
    found = [engine.search(q, K) for q in DATA.queries]
    for ids in found:
        assert len(ids) == K
        assert all(isinstance(i, int) and 0 <= i < DATA.count for i in ids)
    return float(np.mean([truth.recall(i, ids) for i, ids in enumerate(found)]))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_faiss_flat_finds_every_neighbour(metric: str) -> None:
    engine = _loaded(open_engine("faiss", IndexSettings(index="flat", metric=metric), 16, "t"))
    assert engine.index_step is None
    assert _mean_recall(engine, metric) == 1.0


def test_faiss_approximate_indexes_trade_recall_for_work() -> None:
    uniform = build_dataset(DatasetSpec(kind="random", dim=16, count=3000, queries=50, seed=4))
    truth = exact_top_k(uniform.base, uniform.queries, K, "l2")

    def mean_recall(settings: IndexSettings) -> float:
        engine = open_engine("faiss", settings, 16, "t")
        engine.create()
        engine.build_index(uniform.base)
        engine.insert(0, uniform.base)
        return float(
            np.mean([truth.recall(i, engine.search(q, K)) for i, q in enumerate(uniform.queries)])
        )

    ivf_narrow = mean_recall(IndexSettings(index="ivf", nlist=64, nprobe=1))
    ivf_wide = mean_recall(IndexSettings(index="ivf", nlist=64, nprobe=64))
    hnsw_small = mean_recall(IndexSettings(index="hnsw", m=4, ef_construction=8, ef_search=1))
    hnsw_large = mean_recall(IndexSettings(index="hnsw", m=32, ef_construction=200, ef_search=200))
    assert ivf_narrow < 0.8
    assert ivf_wide == 1.0  # every list searched: exact
    assert hnsw_small < hnsw_large
    assert hnsw_large > 0.95


def test_faiss_ivf_needs_as_many_vectors_as_lists() -> None:
    engine = open_engine("faiss", IndexSettings(index="ivf", nlist=64), 16, "t")
    engine.create()
    with pytest.raises(EngineError, match="nlist=64 needs at least"):
        engine.build_index(DATA.base[:10])


def test_servers_need_a_url_and_known_engines_only() -> None:
    with pytest.raises(EngineError, match="needs a service"):
        open_engine("chroma", IndexSettings(), 16, "t")
    with pytest.raises(EngineError, match="unknown vector engine 'qdrant'"):
        open_engine("qdrant", IndexSettings(), 16, "t", "http://127.0.0.1:1")
    with pytest.raises(EngineError, match="expected http://host:port"):
        open_engine("milvus", IndexSettings(), 16, "t", "127.0.0.1")


def test_chroma_has_only_hnsw(chroma_url: str) -> None:
    with pytest.raises(EngineError, match="chroma has no 'flat' index"):
        open_engine("chroma", IndexSettings(index="flat"), 16, "aif_t", chroma_url)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_chroma_end_to_end(chroma_url: str, metric: str) -> None:
    import chromadb

    settings = IndexSettings(index="hnsw", metric=metric, m=16, ef_construction=100, ef_search=100)
    engine = _loaded(open_engine("chroma", settings, 16, f"aif_engine_{metric}", chroma_url))
    assert engine.index_step is None
    assert _mean_recall(engine, metric) > 0.9
    client = chromadb.HttpClient(host="127.0.0.1", port=int(chroma_url.rsplit(":", 1)[1]))
    collection = client.get_collection(f"aif_engine_{metric}")
    assert collection.count() == DATA.count
    assert collection.configuration["hnsw"]["space"] == metric
    assert collection.configuration["hnsw"]["max_neighbors"] == 16
    _loaded(engine)  # a second load replaces the collection rather than adding to it
    assert client.get_collection(f"aif_engine_{metric}").count() == DATA.count
    assert engine.stored_count() == DATA.count
    engine.drop()
    assert engine.stored_count() is None
    assert f"aif_engine_{metric}" not in [c.name for c in client.list_collections()]


def test_chroma_batches_beyond_its_limit_are_refused(chroma_url: str) -> None:
    engine = open_engine("chroma", IndexSettings(), 2, "aif_engine_big", chroma_url)
    engine.create()
    with pytest.raises(EngineError, match=r"at most \d+ vectors per insert.*batch_size"):
        engine.insert(0, np.zeros((6000, 2), dtype=np.float32))
    engine.drop()


def test_chroma_weak_hnsw_misses(chroma_url: str) -> None:
    settings = IndexSettings(index="hnsw", m=2, ef_construction=4, ef_search=1)
    uniform = build_dataset(DatasetSpec(kind="random", dim=16, count=1500, queries=40, seed=4))
    engine = open_engine("chroma", settings, 16, "aif_engine_weak", chroma_url)
    engine.create()
    engine.insert(0, uniform.base)
    truth = exact_top_k(uniform.base, uniform.queries, K, "l2")
    found = np.mean([truth.recall(i, engine.search(q, K)) for i, q in enumerate(uniform.queries)])
    engine.drop()
    assert found < 0.9


@pytest.mark.parametrize(("index", "exact"), [("flat", True), ("hnsw", False), ("ivf", False)])
def test_milvus_end_to_end(milvus_url: str, index: str, exact: bool) -> None:
    from pymilvus import MilvusClient

    settings = IndexSettings(index=index, nlist=16, nprobe=16)
    engine = _loaded(open_engine("milvus", settings, 16, f"aif_engine_{index}", milvus_url))
    assert engine.index_step == "after_insert"
    found = _mean_recall(engine, "l2")
    assert found == 1.0 if exact else found > 0.9
    client = MilvusClient(milvus_url)
    described = client.describe_index(f"aif_engine_{index}", "vector")
    assert described["index_type"] == {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT"}[index]
    assert client.get_collection_stats(f"aif_engine_{index}")["row_count"] == DATA.count
    assert engine.stored_count() == DATA.count
    engine.drop()
    assert f"aif_engine_{index}" not in client.list_collections()
    assert engine.stored_count() is None
    engine.close()
