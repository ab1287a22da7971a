"""The vector stores a `vectordb` client measures, behind one small synchronous interface.

An engine stores vectors under integer ids 0..count-1, builds its index and answers one query
with the ids it found, nearest first. The calls block; the client runs them in worker threads
(the clients and FAISS release the GIL while they wait or search), so several queries can be in
flight at once.

Where each engine does its indexing work, which decides what the setup metrics mean:
- FAISS (in the client process): `flat` has no index; `hnsw` builds its graph as vectors are
  added (the cost shows in insert_throughput); `ivf` learns its lists from the vectors before any
  is added (index_build_s), then files each added vector into a list.
- Chroma: HNSW only, built as vectors are added (insert_throughput); no separate build step.
- Milvus: vectors go into segments first; the index is built over all of them afterwards
  (index_build_s: flush, create_index, load).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import numpy as np

from pytest_aifactory.loadgen.vector_datasets import normalized

ENGINES = ("faiss", "chroma", "milvus")
INDEXES = ("flat", "hnsw", "ivf")

IndexStep = Literal["before_insert", "after_insert"] | None


class EngineError(RuntimeError):
    """An engine cannot do what the recipe asks (an index it lacks, a client not installed)."""


@dataclass(frozen=True)
class IndexSettings:
    """What the recipe's `vectordb:` section says about the index (see VectorDbOptions)."""

    index: str = "hnsw"
    metric: str = "l2"
    m: int = 16
    ef_construction: int = 100
    ef_search: int = 64
    nlist: int = 64
    nprobe: int = 8

    def ef_for(self, k: int) -> int:
        """HNSW searches at least `k` candidates, or it could not return `k` results."""
        return max(self.ef_search, k)


class VectorEngine:
    """One collection (or in-process index) of `dim`-dimensional vectors."""

    name: ClassVar[str] = ""
    supported_indexes: ClassVar[tuple[str, ...]] = INDEXES

    def __init__(self, settings: IndexSettings, dim: int, collection: str) -> None:
        if settings.index not in self.supported_indexes:
            raise EngineError(
                f"{self.name} has no '{settings.index}' index (it offers: "
                f"{', '.join(self.supported_indexes)}); set vectordb.index accordingly"
            )
        self.settings = settings
        self.dim = dim
        self.collection = collection

    @property
    def index_step(self) -> IndexStep:
        """When `build_index` does work: before the inserts, after them, or never."""
        return None

    def create(self) -> None:
        """An empty collection, replacing one of the same name left by an earlier run."""
        raise NotImplementedError

    def build_index(self, vectors: np.ndarray) -> None:
        """The engine's separate index step (see `index_step`); `vectors` are all the stored
        vectors, for engines that learn from them."""

    def insert(self, first_id: int, vectors: np.ndarray) -> None:
        """Store `vectors` under ids first_id, first_id + 1, ..."""
        raise NotImplementedError

    def search(self, query: np.ndarray, k: int) -> list[int]:
        """Ids of the `k` stored vectors the index finds nearest to `query`, nearest first."""
        raise NotImplementedError

    def stored_count(self) -> int | None:
        """Vectors in an existing collection of this name; None when there is none (always,
        for an in-process index)."""
        return None

    def open(self) -> None:
        """Use the existing collection (loaded by another process, or by an earlier level)."""

    def drop(self) -> None:
        """Remove the collection (nothing for an in-process index)."""

    def close(self) -> None:
        """Release connections."""


class FaissEngine(VectorEngine):
    """An index in the client's own memory: no network, so its numbers are the index's own."""

    name = "faiss"

    def __init__(self, settings: IndexSettings, dim: int, collection: str) -> None:
        super().__init__(settings, dim, collection)
        self._faiss = _import_faiss()
        self.index: Any = None

    @property
    def index_step(self) -> IndexStep:
        return "before_insert" if self.settings.index == "ivf" else None

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        if self.settings.metric == "cosine":
            return normalized(vectors)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def create(self) -> None:
        faiss = self._faiss
        s = self.settings
        metric = faiss.METRIC_L2 if s.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if s.index == "flat":
            self.index = faiss.IndexFlat(self.dim, metric)
        elif s.index == "hnsw":
            self.index = faiss.IndexHNSWFlat(self.dim, s.m, metric)
            self.index.hnsw.efConstruction = s.ef_construction
        else:
            quantizer = faiss.IndexFlat(self.dim, metric)
            self.index = faiss.IndexIVFFlat(quantizer, self.dim, s.nlist, metric)
            self.index.nprobe = s.nprobe
            self._quantizer = quantizer  # the IVF index does not own it

    def build_index(self, vectors: np.ndarray) -> None:
        if self.settings.index != "ivf":
            return
        if vectors.shape[0] < self.settings.nlist:
            raise EngineError(
                f"ivf with nlist={self.settings.nlist} needs at least that many vectors to "
                f"learn its lists from, the dataset has {vectors.shape[0]}: lower vectordb.nlist"
            )
        self.index.train(self._prepare(vectors))

    def insert(self, first_id: int, vectors: np.ndarray) -> None:
        if self.index.ntotal != first_id:
            raise EngineError(f"faiss: vectors must be added in id order (next is {first_id})")
        self.index.add(self._prepare(vectors))

    def search(self, query: np.ndarray, k: int) -> list[int]:
        if self.settings.index == "hnsw":
            params: Any = self._faiss.SearchParametersHNSW(efSearch=self.settings.ef_for(k))
        else:
            params = None
        _, ids = self.index.search(self._prepare(query.reshape(1, -1)), k, params=params)
        return [int(i) for i in ids[0] if i >= 0]

    def drop(self) -> None:
        self.index = None


def _import_faiss() -> Any:
    try:
        # deferred: faiss is optional (the vectordb extra)
        import faiss
    except ImportError:
        raise EngineError(
            "the faiss engine needs the faiss-cpu package (pip install faiss-cpu)"
        ) from None
    return faiss


def limit_threads(engine: str, threads: int) -> None:
    """Let FAISS searches started from the calling thread use at most `threads` OpenMP threads.

    OpenMP keeps this setting per thread, so every worker thread that searches must call it.
    One query alone is too little work to share out: on a busy machine OpenMP's idle threads
    spinning for work made a single flat search ten times slower than one thread did."""
    if engine == "faiss":
        _import_faiss().omp_set_num_threads(threads)


def _split_url(base_url: str) -> tuple[str, int, bool]:
    parts = urlsplit(base_url)
    if not parts.hostname or parts.port is None:
        raise EngineError(f"expected http://host:port for the vector service, got '{base_url}'")
    return parts.hostname, parts.port, parts.scheme == "https"


class ChromaEngine(VectorEngine):
    """A collection on a Chroma server, over its HTTP API."""

    name = "chroma"
    supported_indexes = ("hnsw",)
    SPACES: ClassVar[dict[str, Literal["l2", "ip", "cosine"]]] = {
        "l2": "l2",
        "ip": "ip",
        "cosine": "cosine",
    }

    def __init__(self, settings: IndexSettings, dim: int, collection: str, base_url: str) -> None:
        super().__init__(settings, dim, collection)
        try:
            # deferred: chromadb is optional (the vectordb extra)
            import chromadb
            from chromadb.config import Settings
        except ImportError:
            raise EngineError(
                "the chroma engine needs the chromadb package (pip install chromadb)"
            ) from None
        host, port, ssl = _split_url(base_url)
        self._client = chromadb.HttpClient(
            host=host, port=port, ssl=ssl, settings=Settings(anonymized_telemetry=False)
        )
        self._collection: Any = None
        self._max_batch: int | None = None

    def create(self) -> None:
        self.drop()
        s = self.settings
        self._collection = self._client.create_collection(
            self.collection,
            configuration={
                "hnsw": {
                    "space": self.SPACES[s.metric],
                    "max_neighbors": s.m,
                    "ef_construction": s.ef_construction,
                    "ef_search": s.ef_search,
                }
            },
            embedding_function=None,
        )

    def stored_count(self) -> int | None:
        try:
            collection = self._client.get_collection(self.collection, embedding_function=None)
            return int(collection.count())
        except Exception:  # chroma's NotFoundError, or ValueError in older clients
            return None

    def open(self) -> None:
        self._collection = self._client.get_collection(self.collection, embedding_function=None)

    def insert(self, first_id: int, vectors: np.ndarray) -> None:
        if self._max_batch is None:
            self._max_batch = int(self._client.get_max_batch_size())
        if vectors.shape[0] > self._max_batch:
            raise EngineError(
                f"chroma takes at most {self._max_batch} vectors per insert, this batch has "
                f"{vectors.shape[0]}: lower vectordb.batch_size"
            )
        ids = [str(i) for i in range(first_id, first_id + vectors.shape[0])]
        self._collection.add(ids=ids, embeddings=vectors)

    def search(self, query: np.ndarray, k: int) -> list[int]:
        found = self._collection.query(
            query_embeddings=query.reshape(1, -1), n_results=k, include=[]
        )
        return [int(i) for i in found["ids"][0]]

    def drop(self) -> None:
        with contextlib.suppress(Exception):  # chroma raises its own NotFoundError, or ValueError
            self._client.delete_collection(self.collection)


class MilvusEngine(VectorEngine):
    """A collection on a Milvus (or Milvus Lite) server, over gRPC."""

    name = "milvus"
    METRICS: ClassVar[dict[str, str]] = {"l2": "L2", "ip": "IP", "cosine": "COSINE"}
    INDEX_TYPES: ClassVar[dict[str, str]] = {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT"}
    ID_FIELD = "id"
    VECTOR_FIELD = "vector"

    def __init__(self, settings: IndexSettings, dim: int, collection: str, base_url: str) -> None:
        super().__init__(settings, dim, collection)
        try:
            # deferred: pymilvus is optional (the vectordb extra)
            from pymilvus import MilvusClient
        except ImportError:
            raise EngineError(
                "the milvus engine needs the pymilvus package (pip install pymilvus)"
            ) from None
        _split_url(base_url)
        self._client = MilvusClient(uri=base_url)

    @property
    def index_step(self) -> IndexStep:
        return "after_insert"

    def create(self) -> None:
        # deferred: pymilvus is optional (the vectordb extra)
        from pymilvus import DataType

        self.drop()
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(self.ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(self.VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        self._client.create_collection(self.collection, schema=schema)

    def insert(self, first_id: int, vectors: np.ndarray) -> None:
        rows = [
            {self.ID_FIELD: first_id + offset, self.VECTOR_FIELD: vector}
            for offset, vector in enumerate(vectors)
        ]
        self._client.insert(self.collection, rows)

    def build_index(self, vectors: np.ndarray) -> None:
        s = self.settings
        params: dict[str, Any] = {}
        if s.index == "hnsw":
            params = {"M": s.m, "efConstruction": s.ef_construction}
        elif s.index == "ivf":
            params = {"nlist": s.nlist}
        index_params = self._client.prepare_index_params()
        index_params.add_index(
            field_name=self.VECTOR_FIELD,
            index_type=self.INDEX_TYPES[s.index],
            metric_type=self.METRICS[s.metric],
            params=params,
        )
        self._client.flush(self.collection)
        self._client.create_index(self.collection, index_params)
        self._client.load_collection(self.collection)

    def stored_count(self) -> int | None:
        if not self._client.has_collection(self.collection):
            return None
        return int(self._client.get_collection_stats(self.collection)["row_count"])

    def open(self) -> None:
        self._client.load_collection(self.collection)

    def search_params(self, k: int) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {}
        if s.index == "hnsw":
            params = {"ef": s.ef_for(k)}
        elif s.index == "ivf":
            params = {"nprobe": s.nprobe}
        return {"metric_type": self.METRICS[s.metric], "params": params}

    def search(self, query: np.ndarray, k: int) -> list[int]:
        found = self._client.search(
            self.collection,
            data=[query],
            limit=k,
            anns_field=self.VECTOR_FIELD,
            search_params=self.search_params(k),
            output_fields=[],
        )
        return [int(hit["id"]) for hit in found[0]]

    def drop(self) -> None:
        if self._client.has_collection(self.collection):
            self._client.drop_collection(self.collection)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


def open_engine(
    engine: str,
    settings: IndexSettings,
    dim: int,
    collection: str,
    base_url: str = "",
) -> VectorEngine:
    """The engine named `engine`; servers are reached at `base_url` (http://host:port)."""
    if engine == "faiss":
        return FaissEngine(settings, dim, collection)
    if not base_url:
        raise EngineError(f"the {engine} engine needs a service to talk to (a base URL)")
    if engine == "chroma":
        return ChromaEngine(settings, dim, collection, base_url)
    if engine == "milvus":
        return MilvusEngine(settings, dim, collection, base_url)
    raise EngineError(f"unknown vector engine '{engine}' (expected one of {', '.join(ENGINES)})")
