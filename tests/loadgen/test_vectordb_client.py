"""The `vectordb` client kind in its own process, as a client job runs it: setup records, per-query
recall checked against an independent computation, one shared collection for several processes,
and clear failures."""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from pytest_aifactory.cluster.rendezvous import free_port
from pytest_aifactory.loadgen.kinds.vectordb import VectorDbOptions
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.loadgen.vector_engines import EngineError
from pytest_aifactory.loadgen.vectordb import (
    INDEX_BUILD_ID,
    LOADED_MARK,
    SETUP_ID,
    VectorLoadError,
    collection_name,
    engine_for,
)
from pytest_aifactory.metrics.operations import summarize_operations
from pytest_aifactory.testing.load_specs import load_spec
from tests.loadgen.test_vectordb_engines import chroma_url  # noqa: F401  (fixture)


def _spec(tmp_path: Path, process: int = 0, **changes: Any) -> LoadSpec:
    fields: dict[str, Any] = {
        "client": "vec",
        "kind": "vectordb",
        "level": 2,
        "records_path": str(tmp_path / f"records.{process}.jsonl"),
        "progress_path": str(tmp_path / f"progress.{process}.json"),
        "requests": 120,
        "warmup_requests": 3,
        "dataset": DatasetSpec(kind="random", dim=16, count=3000, queries=50, k=10, seed=7),
        "options": {"index": "ivf", "nlist": 64, "nprobe": 2, "batch_size": 1000},
        "process": process,
    }
    return load_spec(tmp_path, **{**fields, **changes})


def test_faiss_ivf_records_match_an_independent_computation(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    outcome = run_load(spec)
    assert outcome["completed"] == 120
    assert outcome["engine"] == "faiss"
    records = read_records([spec.records_path])
    setup = records[records["phase"] == "setup"]
    inserts = setup[setup["op"] == "insert"]
    assert inserts["request_id"].tolist() == [SETUP_ID, SETUP_ID + 1, SETUP_ID + 2]
    assert inserts["items"].tolist() == [1000, 1000, 1000]
    assert (inserts["latency_ms"] > 0).all()
    (build,) = setup[setup["op"] == "index_build"].itertuples()
    assert build.request_id == INDEX_BUILD_ID
    assert build.end_ts <= inserts["send_ts"].min()  # IVF learns its lists before the inserts
    queries = records[records["phase"] == "measure"].sort_values("request_id")
    assert len(queries) == 120
    assert (queries["op"] == "query").all()
    assert (queries["items"] == 10).all()
    assert (queries["error"] == "").all()
    assert (queries["latency_ms"] > 0).all()

    # the same vectors, the exact answer by a full sort, and an IVF index of our own
    rng = np.random.default_rng(7)
    base = rng.random((3000, 16), dtype=np.float32)
    query_set = rng.random((50, 16), dtype=np.float32)
    distances = ((query_set[:, None, :].astype(np.float64) - base[None, :, :]) ** 2).sum(axis=2)
    exact = np.argsort(distances, axis=1)[:, :10]
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(16), 16, 64)
    index.train(base)
    index.add(base)
    index.nprobe = 2
    _, found = index.search(query_set, 10)
    expected = [len(set(found[i]) & set(exact[i])) / 10 for i in range(50)]
    reported = queries["recall"].tolist()
    first = int(queries["request_id"].min())
    assert reported == [expected[(first + n) % 50] for n in range(120)]
    assert 0.2 < np.mean(reported) < 0.95  # the index misses some, finds most

    summary = summarize_operations(records, "vectordb")
    level = summary["per_level"]
    assert level["recall_at_k"] == pytest.approx(np.mean(reported))
    span = inserts["end_ts"].max() - inserts["send_ts"].min()
    assert level["insert_throughput"] == pytest.approx(3000 / span)
    assert level["index_build_s"] == pytest.approx(build.latency_ms / 1000)
    assert level["qps"] == pytest.approx(120 / (queries["end_ts"].max() - queries["send_ts"].min()))
    assert summary["by_op"]["query"]["count"] == 120


def test_faiss_flat_recall_is_exactly_one(tmp_path: Path) -> None:
    clustered = DatasetSpec(kind="clustered", dim=32, count=4000, queries=40, k=10, clusters=8)
    spec = _spec(tmp_path, dataset=clustered, options={"index": "flat", "metric": "cosine"})
    run_load(spec)
    records = read_records([spec.records_path])
    level = summarize_operations(records, "vectordb")["per_level"]
    assert level["recall_at_k"] == 1.0
    assert "index_build_s" not in level  # a flat index has nothing to build
    assert level["insert_throughput"] > 0


def test_hnsw_settings_reach_faiss(tmp_path: Path) -> None:
    def mean_recall(folder: Path, ef_search: int) -> float:
        folder.mkdir()
        options = {"index": "hnsw", "m": 4, "ef_construction": 16, "ef_search": ef_search}
        spec = _spec(folder, options=options, requests=50)
        run_load(spec)
        level = summarize_operations(read_records([spec.records_path]), "vectordb")["per_level"]
        return float(level["recall_at_k"])

    assert mean_recall(tmp_path / "narrow", 10) < mean_recall(tmp_path / "wide", 400)


def _run_process(spec: LoadSpec, results: Any) -> None:
    try:
        results.put((spec.process, run_load(spec)))
    except Exception as err:  # reported to the test, which fails on it
        results.put((spec.process, repr(err)))


@pytest.mark.slow
def test_processes_share_one_collection_loaded_by_process_0(
    tmp_path: Path,
    chroma_url: str,  # noqa: F811
) -> None:
    import chromadb

    barrier = tmp_path / "barrier"
    dataset = DatasetSpec(kind="clustered", dim=16, count=2000, queries=30, k=5, clusters=8)
    specs = [
        _spec(
            tmp_path,
            process=p,
            processes=2,
            level=1,
            requests=40,
            base_url=chroma_url,
            service_kind="chroma",
            barrier_dir=str(barrier),
            dataset=dataset,
            options={"index": "hnsw", "ef_search": 100, "batch_size": 500},
        )
        for p in range(2)
    ]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_run_process, args=(s, results)) for s in specs]
    for worker in workers:
        worker.start()
    outcomes = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
    assert all(isinstance(o, dict) for o in outcomes.values()), outcomes
    assert outcomes[0]["collection"] == outcomes[1]["collection"]
    assert outcomes[0]["completed"] == outcomes[1]["completed"] == 40

    records = read_records([s.records_path for s in specs])
    setup = records[records["phase"] == "setup"]
    assert set(setup["process"]) == {0}  # only process 0 loaded
    assert setup["items"].sum() == 2000
    measured = records[records["phase"] == "measure"]
    assert set(measured["process"]) == {0, 1}
    assert measured["recall"].notna().all()
    assert measured["recall"].mean() > 0.9
    assert json.loads((barrier / LOADED_MARK).read_text()) == {"ok": True, "error": ""}
    client = chromadb.HttpClient(host="127.0.0.1", port=int(chroma_url.rsplit(":", 1)[1]))
    names = [c.name for c in client.list_collections()]
    assert outcomes[0]["collection"] not in names  # dropped once both were done


def test_waiting_processes_report_a_failed_load(tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    (barrier / LOADED_MARK).write_text(json.dumps({"ok": False, "error": "Boom: disk full"}))
    spec = _spec(
        tmp_path,
        process=1,
        processes=2,
        base_url=f"http://127.0.0.1:{free_port('127.0.0.1')}",
        service_kind="milvus",
        barrier_dir=str(barrier),
    )
    with pytest.raises(VectorLoadError, match=r"process 0 could not load .*Boom: disk full"):
        run_load(spec)


def test_a_server_that_is_not_there_fails_the_setup_clearly(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    spec = _spec(
        tmp_path,
        base_url=f"http://127.0.0.1:{port}",
        service_kind="chroma",
        options={"index": "hnsw"},
        timeout_s=5,
    )
    with pytest.raises(VectorLoadError, match=f"chroma at http://127.0.0.1:{port}"):
        run_load(spec)


def test_engine_follows_the_service_or_the_recipe(tmp_path: Path) -> None:
    options = VectorDbOptions()
    assert engine_for(_spec(tmp_path), options) == "faiss"
    served = _spec(tmp_path, base_url="http://127.0.0.1:1", service_kind="milvus")
    assert engine_for(served, options) == "milvus"
    external = _spec(tmp_path, base_url="http://127.0.0.1:1", service_kind="external")
    with pytest.raises(EngineError, match=r"set vectordb\.engine"):
        engine_for(external, options)
    assert engine_for(external, VectorDbOptions(engine="chroma")) == "chroma"
    with pytest.raises(EngineError, match="engine faiss runs inside the client job"):
        engine_for(served, VectorDbOptions(engine="faiss"))


def test_collection_names_suit_both_servers(tmp_path: Path) -> None:
    options = VectorDbOptions()
    spec = _spec(tmp_path, client="my client/1", level_label="rate=2.5", barrier_dir="/x/b")
    name = collection_name(spec, options, shared=True)
    assert name.startswith("aif_my_client_1_rate_2_5_")
    assert name.replace("_", "").isalnum()
    assert 3 <= len(name) <= 255
    again = _spec(
        tmp_path, process=1, client="my client/1", level_label="rate=2.5", barrier_dir="/x/b"
    )
    assert collection_name(again, options, shared=True) == name
    other_level = _spec(tmp_path, client="my client/1", level_label="rate=5", barrier_dir="/x/c")
    assert collection_name(other_level, options, shared=True) != name
    alone = _spec(tmp_path, process=1, processes=2)
    assert collection_name(alone, options, shared=False).endswith("_p1")
    assert collection_name(spec, VectorDbOptions(collection="mine"), shared=True) == "mine"


def test_every_query_is_timed_on_its_own(tmp_path: Path) -> None:
    spec = _spec(tmp_path, mode="rate", level=200.0, requests=60, options={"index": "flat"})
    run_load(spec)
    queries = read_records([spec.records_path])
    queries = queries[queries["phase"] == "measure"]
    assert len(queries) == 60
    assert (queries["queue_ms"] >= 0).all()
    assert all(
        math.isclose(row.latency_ms, (row.end_ts - row.send_ts) * 1000, abs_tol=0.05)
        for row in queries.itertuples()
    )


def test_a_reused_collection_is_loaded_once(tmp_path: Path, chroma_url: str) -> None:  # noqa: F811
    import chromadb

    dataset = DatasetSpec(kind="clustered", dim=8, count=600, queries=20, k=5, clusters=4)
    options = {"index": "hnsw", "reuse_collection": True, "batch_size": 200}

    def level(label: str) -> tuple[dict[str, Any], Any]:
        folder = tmp_path / label
        spec = _spec(
            folder,
            base_url=chroma_url,
            service_kind="chroma",
            dataset=dataset,
            options=options,
            requests=20,
            barrier_dir=str(folder / "barrier"),
        )
        return run_load(spec), read_records([spec.records_path])

    first, first_records = level("1")
    second, second_records = level("2")
    assert first["collection"] == second["collection"]  # named by its content, not the level
    assert (first["reused"], second["reused"]) == (False, True)
    assert (first_records["phase"] == "setup").sum() == 3
    assert (second_records["phase"] == "setup").sum() == 0
    assert second_records["recall"].notna().all()
    client = chromadb.HttpClient(host="127.0.0.1", port=int(chroma_url.rsplit(":", 1)[1]))
    assert client.get_collection(first["collection"]).count() == 600  # kept, not doubled
    changed = dict(options, m=8)
    other = _spec(tmp_path / "3", base_url=chroma_url, service_kind="chroma", dataset=dataset)
    assert collection_name(other, VectorDbOptions(**changed), shared=True) != first["collection"]
    client.delete_collection(first["collection"])
