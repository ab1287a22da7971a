"""Vector datasets and the exact answers recall is scored against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.loadgen.vector_datasets import (
    TRUTH_BLOCK_ROWS,
    DatasetError,
    build_dataset,
    exact_top_k,
    normalized,
    recall,
)


def test_random_is_uniform_seeded_and_queries_are_not_stored() -> None:
    spec = DatasetSpec(kind="random", dim=8, count=500, queries=20, seed=5)
    first, again = build_dataset(spec), build_dataset(spec)
    assert first.base.shape == (500, 8)
    assert first.queries.shape == (20, 8)
    assert first.base.dtype == np.float32
    assert first.base.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(first.base, again.base)
    np.testing.assert_array_equal(first.queries, again.queries)
    assert first.base.min() >= 0.0
    assert first.base.max() < 1.0
    other = build_dataset(DatasetSpec(kind="random", dim=8, count=500, queries=20, seed=6))
    assert not np.array_equal(first.base, other.base)
    stored = {row.tobytes() for row in first.base}
    assert not any(q.tobytes() in stored for q in first.queries)


def test_clustered_points_gather_around_their_centres() -> None:
    data = build_dataset(DatasetSpec(kind="clustered", dim=16, count=2000, queries=10, clusters=4))
    # four tight clusters: each point is far nearer its nearest neighbour than a random pair is
    sample = data.base[:200].astype(np.float64)
    distances = np.sqrt(((sample[:, None, :] - sample[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(distances, np.inf)
    assert np.median(distances.min(axis=1)) < 0.3 * np.median(distances[np.isfinite(distances)])
    uniform = build_dataset(DatasetSpec(kind="random", dim=16, count=2000, queries=10))
    assert data.base.std() > uniform.base.std()


def test_npy_file_holds_back_the_queries(tmp_path: Path) -> None:
    rows = np.arange(60, dtype=np.float64).reshape(20, 3)
    np.save(tmp_path / "v.npy", rows)
    data = build_dataset(
        DatasetSpec(kind="file", path=str(tmp_path / "v.npy"), count=100, queries=5)
    )
    assert data.base.shape == (15, 3)
    assert data.queries.shape == (5, 3)
    assert data.base.dtype == np.float32
    np.testing.assert_array_equal(data.base, rows[:15])
    np.testing.assert_array_equal(data.queries, rows[15:])
    fewer = build_dataset(
        DatasetSpec(kind="file", path=str(tmp_path / "v.npy"), count=4, queries=2)
    )
    np.testing.assert_array_equal(fewer.queries, rows[4:6])


def test_parquet_list_column_and_numeric_columns(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    table = pa.table({"id": list(range(12)), "embedding": [list(map(float, v)) for v in vectors]})
    pq.write_table(table, tmp_path / "lists.parquet")
    data = build_dataset(
        DatasetSpec(kind="file", path=str(tmp_path / "lists.parquet"), count=10, queries=2)
    )
    np.testing.assert_allclose(data.base, vectors[:10])
    np.testing.assert_allclose(data.queries, vectors[10:])

    columns = {f"d{i}": vectors[:, i] for i in range(4)}
    pq.write_table(pa.table(columns), tmp_path / "wide.parquet")
    wide = build_dataset(
        DatasetSpec(kind="file", path=str(tmp_path / "wide.parquet"), count=10, queries=2)
    )
    np.testing.assert_allclose(wide.base, vectors[:10])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.npy", None, "not found"),
        ("v.txt", "1 2 3", "expected a .npy or .parquet"),
        ("flat.npy", np.zeros(10), "2-D"),
        ("short.npy", np.zeros((3, 2)), "3 rows, but 3 queries"),
        ("nan.npy", np.full((10, 2), np.nan), "NaN"),
        ("broken.npy", "not numpy", "not a readable .npy"),
    ],
)
def test_bad_files_name_the_problem(
    tmp_path: Path, name: str, content: object, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(DatasetError, match=message):
        build_dataset(DatasetSpec(kind="file", path=str(path), count=100, queries=3))


def _naive(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    b, q = base.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        d = ((q[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
    elif metric == "ip":
        d = -(q @ b.T)
    else:
        d = (
            -(q / np.linalg.norm(q, axis=1, keepdims=True))
            @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
        )
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_top_k_matches_a_full_sort_across_blocks(metric: str) -> None:
    data = build_dataset(
        DatasetSpec(kind="random", dim=6, count=TRUTH_BLOCK_ROWS + 300, queries=15, seed=2)
    )
    truth = exact_top_k(data.base, data.queries, 7, metric)
    np.testing.assert_array_equal(truth.ids, _naive(data.base, data.queries, 7, metric))
    assert truth.ids.shape == (15, 7)


def test_fewer_vectors_than_k_are_all_the_answer() -> None:
    base = np.eye(3, dtype=np.float32)
    truth = exact_top_k(base, base[:1], 10, "l2")
    assert truth.ids[0].tolist()[0] == 0
    assert sorted(truth.ids[0].tolist()) == [0, 1, 2]
    assert truth.recall(0, [2, 1, 0]) == 1.0
    assert recall([0, 1], truth.ids[0], 10) == pytest.approx(2 / 3)


def test_recall_counts_the_overlap_once_per_id() -> None:
    data = build_dataset(DatasetSpec(kind="random", dim=4, count=300, queries=3, seed=1))
    truth = exact_top_k(data.base, data.queries, 5, "l2")
    exact = truth.ids[0].tolist()
    outsiders = [i for i in range(300) if i not in exact][-3:]  # far from the 5 nearest
    assert truth.recall(0, exact) == 1.0
    assert truth.recall(0, list(reversed(exact))) == 1.0
    assert truth.recall(0, exact[:2] + outsiders) == pytest.approx(0.4)
    assert truth.recall(0, [exact[0]] * 5) == pytest.approx(0.2)
    assert truth.recall(0, []) == 0.0
    assert truth.recall(0, exact + outsiders) == 1.0  # only the first k returned count
    assert recall(exact[:2] + outsiders, truth.ids[0], 5) == pytest.approx(0.4)


def test_a_tie_at_the_kth_place_is_an_exact_answer_too() -> None:
    # two stored vectors at the same distance from the query: either is the 2nd nearest
    base = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    truth = exact_top_k(base, np.zeros((1, 2), dtype=np.float32), 2, "l2")
    assert truth.ids[0].tolist() == [0, 1]
    assert truth.recall(0, [0, 2]) == 1.0
    assert truth.recall(0, [0, 3]) == 0.5
    # and ties within float32's resolution, not only exact ones
    nudged = base.copy()
    nudged[2, 1] = np.nextafter(np.float32(1.0), np.float32(2.0))
    truth = exact_top_k(nudged, np.zeros((1, 2), dtype=np.float32), 2, "l2")
    assert truth.recall(0, [0, 2]) == 1.0


def test_cosine_is_the_angle_not_the_length() -> None:
    base = np.array([[10.0, 0.0], [0.1, 0.1], [0.0, 3.0]], dtype=np.float32)
    query = np.array([[1.0, 1.05]], dtype=np.float32)
    assert exact_top_k(base, query, 1, "cosine").ids[0].tolist() == [1]
    assert exact_top_k(base, query, 1, "ip").ids[0].tolist() == [0]
    assert exact_top_k(base, query, 1, "l2").ids[0].tolist() == [1]
    np.testing.assert_allclose(np.linalg.norm(normalized(base), axis=1), 1.0, rtol=1e-6)
