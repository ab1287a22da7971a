"""Vector search: inserts, index build, then top-k queries against Chroma, Milvus or FAISS
inside the client job; QPS, latency and recall@k against exact search."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import PositiveFloat, PositiveInt, ValidationInfo, field_validator

from pytest_aifactory.loadgen.kind import ClientKind, KindOptions
from pytest_aifactory.metrics.catalog import Headline, metric


class VectorDbOptions(KindOptions):
    """Which engine and index the vectors go into and how they are sent.

    `engine`: by default the service's kind (chroma, milvus), or FAISS inside the client job
    when the client has no service; give it for an `external` service. `index`: flat (exact),
    hnsw or ivf (Chroma offers only hnsw); `metric`: l2, ip or cosine; inserts go in batches of
    `batch_size`. The HNSW and IVF settings apply where the engine has them; HNSW searches at
    least `k` candidates whatever `ef_search` says.

    Every level loads its own collection (so each level measures loading too), unless
    `reuse_collection`: then a collection already holding this dataset with these index
    settings (on the service, from an earlier level or run) is queried as it is, and kept.
    With several processes, one collection serves them all: process 0 loads it while the
    others wait (up to `load_timeout_s`), and drops it when all are done unless
    `keep_collection`. FAISS lives in each process's memory, so each builds its own."""

    engine: Literal["chroma", "milvus", "faiss"] | None = None
    index: Literal["flat", "hnsw", "ivf"] = "hnsw"
    metric: Literal["l2", "ip", "cosine"] = "l2"
    batch_size: PositiveInt = 1000
    m: PositiveInt = 16
    """HNSW: links per node (Chroma's max_neighbors, Milvus's M)."""
    ef_construction: PositiveInt = 100
    ef_search: PositiveInt = 64
    nlist: PositiveInt = 64
    """IVF: inverted lists (clusters)."""
    nprobe: PositiveInt = 8
    """IVF: lists searched per query."""
    collection: str | None = None
    """Collection name on the server; default: one made from the client, level and run."""
    keep_collection: bool = False
    reuse_collection: bool = False
    load_timeout_s: PositiveFloat = 3600.0
    threads: PositiveInt = 1
    """FAISS: OpenMP threads per query (the load's concurrency runs queries side by side;
    loading uses one per core)."""

    def level_seconds(self, load_s: float) -> float:
        """Loading the collection comes first and may take up to `load_timeout_s`."""
        return load_s + self.load_timeout_s

    @field_validator("collection")
    @classmethod
    def _vector_collection(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{1,253}[A-Za-z0-9]", value):
            raise ValueError(
                "expected 3-255 letters, digits and '_', starting with a letter and ending "
                f"with a letter or digit (a name both Chroma and Milvus accept), got {value!r}"
            )
        return value

    @field_validator("nprobe")
    @classmethod
    def _vector_nprobe(cls, value: int, info: ValidationInfo) -> int:
        nlist = info.data.get("nlist")
        if nlist is not None and value > nlist:
            raise ValueError(f"nprobe ({value}) cannot exceed nlist ({nlist})")
        return value


CLIENT_KIND = ClientKind(
    name="vectordb",
    description="loads vectors into a vector database (or FAISS in the job) and queries them",
    load="pytest_aifactory.loadgen.vectordb:run_vectordb",
    summarize="pytest_aifactory.metrics.operations:summarize_operations",
    headline=Headline("qps", "QPS", "latency_ms", "latency"),
    throughput_metric="qps",
    options=VectorDbOptions,
    needs_service=False,
    datasets="vectors",
    metrics=(
        metric("recall_at_k", "ratio", True, False, "vectordb", "overlap with exact top-k"),
        metric("qps", "q/s", True, False, "vectordb", "queries per second"),
        metric("insert_throughput", "vec/s", True, False, "vectordb", "vectors inserted per s"),
        metric("index_build_s", "s", False, False, "vectordb", "index build time"),
    ),
)  # fmt: skip
