"""The vector search benchmark on recipes/vectordb.yaml, end to end: real Chroma and Milvus Lite
services, FAISS in real client jobs, the recipe's own SLOs, and an impossible recall objective
that must fail naming its metric, with the reported recall checked against our own."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import yaml

from tests.factories import speed_objectives_loosened
from tests.helpers import REPO, processes_matching, run_benchmark, write_recipe

pytestmark = pytest.mark.slow

RECIPE = REPO / "recipes" / "vectordb.yaml"
BENCHMARK = REPO / "benchmarks" / "test_vectordb.py"
BIN = Path(sys.executable).parent

WEAK_IVF = {"index": "ivf", "nlist": 64, "nprobe": 1}
UNIFORM = {"kind": "random", "dim": 16, "count": 3000, "queries": 50, "k": 10, "seed": 11}


def short_recipe() -> dict[str, Any]:
    """The shipped recipe and its SLOs with one level, fewer vectors and fewer queries per
    client, no Prometheus, and one more client whose recall objective its index cannot meet."""
    document = yaml.safe_load(RECIPE.read_text())
    for client in document["clients"].values():
        client["dataset"]["count"] = min(client["dataset"]["count"], 3000)
        load = client["load"]
        load["levels"] = load["levels"][-1:]
        load["requests"] = min(load["requests"], 100 if load["mode"] == "concurrency" else 20)
    document["clients"]["impossible"] = {
        "kind": "vectordb",
        "dataset": UNIFORM,
        "vectordb": WEAK_IVF,
        "load": {"mode": "concurrency", "levels": [1], "requests": 100},
    }
    document["slo"] = speed_objectives_loosened(document["slo"])  # recall as shipped
    document["slo"]["impossible"] = {"recall_at_k": {"min": 0.99}}
    document["monitor"] = {"prometheus": False}
    return document


def independent_recall() -> float:
    """Recall of the impossible client's index, computed here: the same seeded vectors, the
    exact neighbours by a full sort, and an IVF index of our own with the same settings."""
    rng = np.random.default_rng(UNIFORM["seed"])
    base = rng.random((UNIFORM["count"], UNIFORM["dim"]), dtype=np.float32)
    queries = rng.random((UNIFORM["queries"], UNIFORM["dim"]), dtype=np.float32)
    distances = ((queries[:, None, :].astype(np.float64) - base[None, :, :]) ** 2).sum(axis=2)
    exact = np.argsort(distances, axis=1)[:, : UNIFORM["k"]]
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(UNIFORM["dim"]), UNIFORM["dim"], 64)
    index.train(base)
    index.add(base)
    index.nprobe = 1
    _, found = index.search(queries, UNIFORM["k"])
    # 100 queries cycle twice through the 50: the mean over the 50 is the mean over all
    return float(
        np.mean([len(set(f) & set(e)) / UNIFORM["k"] for f, e in zip(found, exact, strict=True)])
    )


@pytest.mark.requires("chromadb", "milvus-lite")
def test_recipe_slos_hold_and_an_impossible_one_fails(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "vectordb.yaml", short_recipe())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    session = run_benchmark(
        tmp_path, recipe, "-rA", timeout=400, env={"TMPDIR": str(scratch)}, benchmark=BENCHMARK
    )
    output = session.output
    assert session.returncode == 1, output[-4000:]
    passed, failed = session.verdicts()
    assert passed == {
        "test_vectordb[faiss-flat-concurrency-1]",
        "test_vectordb[faiss-hnsw-concurrency-4]",
        "test_vectordb[chroma-concurrency-4]",
        "test_vectordb[milvus-rate-10]",
    }, output[-4000:]
    assert failed == ["test_vectordb[impossible-concurrency-1]"], output[-4000:]
    assert re.search(r"impossible\[concurrency=1\] recall_at_k = [\d.]+ .*< min 0\.99", output)

    (run,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    summary = yaml.safe_load((run / "summary.json").read_text())
    levels = {test["client"]: test["per_level"] for test in summary["tests"]}
    counts = {test["client"]: test["counts"] for test in summary["tests"]}
    assert levels["faiss-flat"]["recall_at_k"] == 1.0  # an exact index finds every neighbour
    assert levels["impossible"]["recall_at_k"] == pytest.approx(independent_recall(), abs=1e-12)
    assert levels["impossible"]["recall_at_k"] < 0.9
    assert levels["impossible"]["index_build_s"] > 0  # IVF learns its lists
    for client in ("chroma", "milvus", "faiss-hnsw"):
        assert counts[client]["completed"] == counts[client]["sent"] > 0, client
        assert levels[client]["recall_at_k"] >= 0.9, client
        assert levels[client]["qps"] > 0, client
        assert levels[client]["insert_throughput"] > 0, client
    assert levels["milvus"]["index_build_s"] > 0  # Milvus indexes after the inserts
    assert "index_build_s" not in levels["chroma"]  # Chroma indexes as vectors arrive

    assert not processes_matching(str(tmp_path))  # the servers and their jobs are gone
    assert not list(scratch.glob("aifactory-*"))  # and so are their data folders
