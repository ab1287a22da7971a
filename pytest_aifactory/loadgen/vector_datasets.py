"""Vectors to store and queries to search for, and the exact answers every recall is measured by.

Every process of a client builds the same data from the recipe's seed, so a process that did not
load the collection still knows what is in it and what the right answers are. Queries are never
stored vectors: `random` and `clustered` draw them from the same distribution as the stored
ones, `file` holds back the rows after the stored ones.

Uniform random vectors have no structure for an approximate index to exploit, so they show an
index at its worst; `clustered` (a Gaussian mixture) is closer to real embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    from pytest_aifactory.loadgen.spec import DatasetSpec

KINDS = ("random", "clustered", "file")
METRICS = ("l2", "ip", "cosine")
CLUSTER_SPREAD = 0.25
"""Standard deviation of a clustered point around its centre; centres are standard normal, so
neighbouring clusters overlap a little, as topics in an embedding space do."""
TRUTH_BLOCK_ROWS = 16_384
"""Stored vectors compared with the queries at once: bounds the exact search's memory."""
VECTOR_COLUMNS = ("vector", "embedding", "embeddings", "emb")
"""Parquet columns taken as the vectors, in this order, when the file has a list column."""


class DatasetError(ValueError):
    """The dataset the recipe describes cannot be built (a missing or malformed file)."""


@dataclass(frozen=True)
class VectorDataset:
    """`base` is stored under ids 0..count-1; `queries` are searched for."""

    base: np.ndarray
    queries: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    @property
    def count(self) -> int:
        return int(self.base.shape[0])


def build_dataset(spec: DatasetSpec) -> VectorDataset:
    """The dataset a `DatasetSpec` describes, as C-contiguous float32 arrays."""
    if spec.kind == "random":
        rng = np.random.default_rng(spec.seed)
        base = rng.random((spec.count, spec.dim), dtype=np.float32)
        queries = rng.random((spec.queries, spec.dim), dtype=np.float32)
        return VectorDataset(base, queries)
    if spec.kind == "clustered":
        return _clustered(spec)
    if spec.kind == "file":
        if not spec.path:
            raise DatasetError("a dataset of kind 'file' needs a path")
        return load_file(Path(spec.path), spec.count, spec.queries)
    raise DatasetError(f"unknown vector dataset kind '{spec.kind}' (expected one of {KINDS})")


def _clustered(spec: DatasetSpec) -> VectorDataset:
    rng = np.random.default_rng(spec.seed)
    centres = rng.standard_normal((spec.clusters, spec.dim), dtype=np.float32)

    def draw(n: int) -> np.ndarray:
        members = rng.integers(0, spec.clusters, size=n)
        noise = rng.standard_normal((n, spec.dim), dtype=np.float32)
        return np.ascontiguousarray(centres[members] + CLUSTER_SPREAD * noise, dtype=np.float32)

    return VectorDataset(draw(spec.count), draw(spec.queries))


def load_file(path: Path, count: int, queries: int) -> VectorDataset:
    """A user's vectors: a 2-D .npy array, or a .parquet file with one list column (named
    vector/embedding/emb, or the only one) or only numeric columns (one per dimension).
    The first `count` rows are stored (fewer if the file is short) and the `queries` rows after
    them are the queries, so no query is a stored vector."""
    if not path.is_file():
        raise DatasetError(f"vector file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            rows = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: not a readable .npy array ({err})") from None
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise DatasetError(f"{path}: expected a .npy or .parquet file, got '{suffix or path}'")
    if rows.ndim != 2 or rows.shape[1] < 1:
        raise DatasetError(f"{path}: expected rows of vectors (2-D), got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.number):
        raise DatasetError(f"{path}: expected numbers, got {rows.dtype}")
    total = rows.shape[0]
    if total <= queries:
        raise DatasetError(
            f"{path}: {total} rows, but {queries} queries are held out of the stored vectors: "
            "lower dataset.queries or give a longer file"
        )
    stored = min(count, total - queries)
    base = np.ascontiguousarray(rows[:stored], dtype=np.float32)
    held_out = np.ascontiguousarray(rows[stored : stored + queries], dtype=np.float32)
    if not (np.isfinite(base).all() and np.isfinite(held_out).all()):
        raise DatasetError(f"{path}: the vectors hold NaN or infinite values")
    return VectorDataset(base, held_out)


def _parquet_rows(path: Path) -> np.ndarray:
    # deferred: pyarrow is slow to import and only Parquet datasets need it
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise DatasetError(f"{path}: not a readable Parquet file ({err})") from None
    lists = [
        field.name
        for field in table.schema
        if pa.types.is_list(field.type)
        or pa.types.is_large_list(field.type)
        or pa.types.is_fixed_size_list(field.type)
    ]
    if lists:
        named = [c for c in VECTOR_COLUMNS if c in lists]
        if not named and len(lists) > 1:
            raise DatasetError(
                f"{path}: several list columns ({', '.join(lists)}); name the vectors' column "
                f"one of {', '.join(VECTOR_COLUMNS)}"
            )
        column = cast(
            "pa.lib.BaseListArray[Any]",
            table.column(named[0] if named else lists[0]).combine_chunks(),
        )
        lengths = pa.compute.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise DatasetError(f"{path}: the vectors do not all have the same length")
        width = int(lengths[0]) if len(lengths) else 0
        values = column.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float32).reshape(len(column), width)
    numeric = [
        f.name for f in table.schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)
    ]
    if not numeric or len(numeric) != table.num_columns:
        raise DatasetError(
            f"{path}: expected one list column of vectors or only numeric columns (one per "
            "dimension)"
        )
    return np.column_stack([table.column(c).to_numpy() for c in numeric]).astype(np.float32)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero): cosine similarity becomes a dot
    product."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms == 0, 1, norms), dtype=np.float32)


def _scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Smaller is nearer, in float64. l2: squared distance less the query's own squared norm
    (the same for every candidate); ip and cosine (rows already normalized): minus the dot
    product."""
    q = queries.astype(np.float64)
    x = vectors.astype(np.float64)
    if metric == "l2":
        scores: np.ndarray = (x * x).sum(axis=1)[None, :] - 2.0 * (q @ x.T)
        return scores
    return -(q @ x.T)


@dataclass(frozen=True)
class GroundTruth:
    """Each query's exact top-k, and the score within which a vector is as near as the k-th.

    Two vectors whose distances to a query differ by less than float32 can resolve are a tie:
    an index computing in float32 (all of them) may return either, and either is an exact
    answer. So a returned vector counts as found when it is in the exact top-k or scores within
    `TIE_TOLERANCE` x (|q|^2 + |x_k|^2) of the k-th; without such ties this is exactly
    |returned ∩ exact top-k| / k (docs/metrics.md).
    """

    ids: np.ndarray
    """(queries, min(k, count)) ids, nearest first."""
    bound: np.ndarray
    """(queries,) the score at or below which a vector ties with the k-th."""
    base: np.ndarray
    queries: np.ndarray
    """Both as searched: normalized for cosine."""
    metric: str
    k: int

    def recall(self, query: int, returned: list[int] | np.ndarray) -> float:
        """Recall@k of one query's results (duplicates count once)."""
        wanted = int(self.ids.shape[1])
        exact = {int(i) for i in self.ids[query]}
        found = {int(i) for i in returned[: self.k]}
        hits = len(found & exact)
        others = [i for i in found - exact if 0 <= i < self.base.shape[0]]
        if others and hits < wanted:
            scores = _scores(self.queries[query : query + 1], self.base[others], self.metric)
            hits += int((scores[0] <= self.bound[query]).sum())
        return min(hits, wanted) / wanted


TIE_TOLERANCE = 1e-6
"""About eight float32 roundings of the squared norms involved: distances closer than this
cannot be ordered by an index computing in float32."""


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> GroundTruth:
    """Each query's `k` nearest stored vectors by brute force in float64: the answer an index's
    results are scored against. `l2`: smallest Euclidean distance; `ip`: largest inner
    product; `cosine`: largest cosine similarity."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}' (expected one of {METRICS})")
    if k < 1 or base.shape[0] < 1:
        raise ValueError("an exact search needs k >= 1 and at least one stored vector")
    if metric == "cosine":
        base, queries = normalized(base), normalized(queries)
    wanted = min(k, base.shape[0])
    best_ids = np.empty((queries.shape[0], 0), dtype=np.int64)
    best_scores = np.empty((queries.shape[0], 0), dtype=np.float64)
    for start in range(0, base.shape[0], TRUTH_BLOCK_ROWS):
        scores = _scores(queries, base[start : start + TRUTH_BLOCK_ROWS], metric)
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate([best_ids, ids], axis=1)
        if scores.shape[1] > wanted:
            keep = np.argpartition(scores, wanted - 1, axis=1)[:, :wanted]
            scores = np.take_along_axis(scores, keep, axis=1)
            ids = np.take_along_axis(ids, keep, axis=1)
        best_scores, best_ids = scores, ids
    order = np.lexsort((best_ids, best_scores), axis=1)
    ids = np.take_along_axis(best_ids, order, axis=1)
    kth = np.take_along_axis(best_scores, order, axis=1)[:, -1]
    q = queries.astype(np.float64)
    last = base[ids[:, -1]].astype(np.float64)
    scale = (q * q).sum(axis=1) + (last * last).sum(axis=1)
    return GroundTruth(ids, kth + TIE_TOLERANCE * scale, base, queries, metric, k)


def recall(returned: list[int] | np.ndarray, truth: np.ndarray, k: int) -> float:
    """|returned ∩ exact top-k| / k (docs/metrics.md) against a list of exact ids, ties not
    considered; duplicates in `returned` count once. With fewer than `k` vectors stored, all
    of them are the exact answer and the divisor."""
    wanted = min(k, len(truth))
    if wanted <= 0:
        raise ValueError("recall needs k >= 1 and at least one stored vector")
    hits = {int(i) for i in returned[:k]} & {int(i) for i in truth[:wanted]}
    return len(hits) / wanted
