"""Builds a run's `report.html` and its chart files from what the run saved, and nothing else.

Only summary.json, records.parquet and metrics.parquet are read, so a run of any age can be
rendered again by a newer version. Records are read column by column: the scalar columns as
one frame, the per-request inter-token gaps streamed in batches into one pool per test (exact
while small, a fixed-size histogram when large), so a run of a million requests fits in a
fraction of the memory its gaps would take.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pytest_aifactory.atomic import write_text_atomic
from pytest_aifactory.monitor.run_monitor import read_metrics
from pytest_aifactory.report import charts as ch
from pytest_aifactory.report.html_report import ChartView, render_report, slug
from pytest_aifactory.report.previous import previous_section

if TYPE_CHECKING:
    import pyarrow as pa

REPORT_NAME = "report.html"
SUMMARY_NAME = "summary.json"
RECORDS_NAME = "records.parquet"
METRICS_NAME = "metrics.parquet"
PNG_SCALE = 1.5
EXACT_LIMIT = 2_000_000
"""Gaps per test kept exactly; beyond this a test's gaps go into a `LogHistogram`."""
BATCH_ROWS = 65_536
_READ_BUFFER = 4 << 20


class ReportError(Exception):
    """The run cannot be reported on; the message says why, in one line."""


def load_summary(run_root: Path) -> dict[str, Any]:
    path = run_root / SUMMARY_NAME
    if not run_root.is_dir():
        raise ReportError(f"{run_root}: no such run folder")
    if not path.is_file():
        raise ReportError(f"{run_root}: no {SUMMARY_NAME} (the run ended before it wrote one)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: unreadable ({err})") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: not a run summary")
    return summary


def load_metrics(run_root: Path) -> pd.DataFrame | None:
    """The run's samples (None when it kept none)."""
    return read_metrics(run_root)


class PooledGaps:
    """One test's pooled inter-token gaps: exact while few, a log histogram when many."""

    def __init__(self, exact_limit: int = EXACT_LIMIT) -> None:
        self.exact_limit = exact_limit
        self.parts: list[np.ndarray] = []
        self.kept = 0
        self.histogram: ch.LogHistogram | None = None

    def add(self, values: np.ndarray) -> None:
        if self.histogram is not None:
            self.histogram.add(values)
            return
        values = np.array(values, dtype=float)  # a copy: a view would keep its batch alive
        values = values[np.isfinite(values)]
        self.parts.append(values)
        self.kept += values.size
        if self.kept > self.exact_limit:
            self.histogram = ch.LogHistogram()
            for part in self.parts:
                self.histogram.add(part)
            self.parts, self.kept = [], 0

    def cdf(self, points: int = ch.CDF_POINTS) -> pd.DataFrame:
        if self.histogram is not None:
            return self.histogram.cdf(points)
        return ch.cdf_points(np.concatenate(self.parts) if self.parts else np.empty(0), points)


@dataclass
class RunRecords:
    """What the report needs of records.parquet: every column but the gaps, and the gaps of
    each test's measured, successful requests (`itl`, by test id)."""

    frame: pd.DataFrame
    itl: dict[str, PooledGaps] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _batches(path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    # deferred: pyarrow is slow to import and only reading records.parquet needs it
    import pyarrow.parquet as pq

    # buffered, not pre-buffered: a whole row group of gaps would otherwise sit in memory
    reader = pq.ParquetFile(path, buffer_size=_READ_BUFFER, pre_buffer=False)
    yield from reader.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _stream_gaps(path: Path, names: list[str]) -> dict[str, PooledGaps]:
    # deferred: pyarrow is slow to import and only reading records.parquet needs it
    import pyarrow as pa
    import pyarrow.compute as pc

    measure_phase, no_error = pa.scalar("measure"), pa.scalar("")
    wanted: list[str] = [c for c in ("test_id", "phase", "error", "itl_ms") if c in names]
    pooled: dict[str, PooledGaps] = {}
    for batch in _batches(path, wanted):
        keep = np.ones(batch.num_rows, dtype=bool)
        if "phase" in wanted:
            measure = pc.equal(batch.column("phase"), measure_phase).fill_null(False)
            keep &= measure.to_numpy(zero_copy_only=False)
        if "error" in wanted:
            ok = pc.equal(batch.column("error"), no_error).fill_null(True)
            keep &= ok.to_numpy(zero_copy_only=False)
        ids = batch.column("test_id")
        gaps = batch.column("itl_ms")
        for test_id in pc.unique(ids).to_pylist():
            if test_id is None:
                continue
            rows = keep & pc.equal(ids, test_id).to_numpy(zero_copy_only=False)
            if not rows.any():
                continue
            # a batch of one test that all counts is flattened in place, without a copy
            chosen = gaps if rows.all() else pc.filter(gaps, rows)
            values = pc.list_flatten(chosen).to_numpy(zero_copy_only=False)
            pooled.setdefault(str(test_id), PooledGaps()).add(values)
    return pooled


def load_records(run_root: Path) -> RunRecords:
    """records.parquet without its gaps column, plus each test's pooled gaps.

    A run without the file has no records; an unreadable file is reported as a problem on the
    page rather than stopping the report.
    """
    # deferred: pyarrow is slow to import and only reading records.parquet needs it
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = run_root / RECORDS_NAME
    if not path.is_file():
        return RunRecords(pd.DataFrame())
    try:
        schema = pq.read_schema(path)
        names = list(schema.names)
        lists = {
            f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
        }
        if "test_id" not in names:  # not split by test: small and old; read it whole
            return RunRecords(pd.read_parquet(path))
        texts = [
            f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        # few distinct texts (clients, levels, phases, test ids): as categories they take
        # little memory and compare fast
        columns = [n for n in names if n not in lists]
        frame = pq.read_table(path, columns=columns, read_dictionary=texts).to_pandas()
        itl = _stream_gaps(path, names) if "itl_ms" in lists else {}
    except (OSError, pa.ArrowException) as err:
        return RunRecords(pd.DataFrame(), problems=[f"{RECORDS_NAME} could not be read: {err}"])
    return RunRecords(frame, itl)


def _cdf_for(
    rows: pd.DataFrame, gaps: PooledGaps | None, points: int = ch.CDF_POINTS
) -> pd.DataFrame:
    pooled = {"itl_ms": gaps.cdf(points)} if gaps is not None else None
    return ch.latency_cdf_points(rows, points=points, pooled=pooled)


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}-{number}", number + 1
    taken.add(candidate)
    return candidate


RENDER_THREADS = 4
"""Charts drawn at once: vl-convert draws outside the interpreter's lock, so a report's charts
take about a core's share each instead of one after another."""


@dataclass
class _Files:
    """Writes each chart as SVG and PNG into the report's folder; links relative to the page.
    The drawing runs in threads while the next charts are made; `finish` waits for all."""

    folder: Path
    png_scale: float = PNG_SCALE
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _drawn: list[Future[None]] = field(default_factory=list, repr=False)

    def prepare(self) -> None:
        if self.folder.is_dir():
            # the folder is the report's own: charts of an earlier build must not linger
            for old in self.folder.iterdir():
                if old.suffix in (".svg", ".png") and old.is_file():
                    old.unlink()
        elif self.folder.exists():
            raise ReportError(f"{self.folder}: exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)

    def view(self, key: str, name: str, chart: Any) -> ChartView:
        spec = ch.to_spec(chart)
        stem = f"{key}-{name}"
        if self._pool is None:
            self._pool = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="report-chart")
        self._drawn.append(self._pool.submit(self._draw, stem, spec))
        files = {fmt: f"{self.folder.name}/{stem}.{fmt}" for fmt in ("svg", "png")}
        return ChartView(
            name=name,
            element_id=f"chart-{stem}",
            title=ch.CHART_TITLES.get(name, name),
            spec=spec,
            files=files,
        )

    def _draw(self, stem: str, spec: dict[str, Any]) -> None:
        svg = ch.to_svg(spec)
        (self.folder / f"{stem}.svg").write_text(svg, encoding="utf-8")
        (self.folder / f"{stem}.png").write_bytes(ch.png_from_svg(svg, self.png_scale))

    def finish(self) -> None:
        """Every chart drawn and written; the first failure raised."""
        for drawn in self._drawn:
            drawn.result()

    def close(self) -> None:
        """The drawing threads gone (charts not yet started are not drawn)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._drawn = []


def build_report(
    run_root: Path, output: Path | None = None, *, png_scale: float = PNG_SCALE
) -> Path:
    """Writes `report.html` (or `output`) for the run in `run_root`, with a folder of the same
    stem beside it holding every chart as SVG and PNG; returns the page's path."""
    run_root = Path(run_root)
    summary = load_summary(run_root)
    target = Path(output) if output is not None else run_root / REPORT_NAME
    files = _Files(target.parent / target.stem, png_scale)
    files.prepare()
    try:
        page = _page(run_root, summary, files)
        files.finish()  # the page links every chart file: none may be missing
    finally:
        files.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, page)
    return target


def _page(run_root: Path, summary: dict[str, Any], files: _Files) -> str:

    problems: list[str] = []
    records = load_records(run_root)
    problems += records.problems
    try:
        metrics = load_metrics(run_root)
    except Exception as err:  # a damaged file costs its charts, not the report
        metrics = None
        problems.append(f"{METRICS_NAME} could not be read: {err}")

    tests = [t for t in summary.get("tests") or [] if isinstance(t, dict)]
    for index, test in enumerate(tests):
        test.setdefault("test_id", test.get("name") or f"test-{index}")
    taken: set[str] = set()
    test_anchors = {
        str(t["test_id"]): _unique(slug(str(t.get("name") or t["test_id"])), taken) for t in tests
    }
    clients = ch.run_clients({"tests": tests})
    client_anchors = {c: _unique("client-" + slug(c), taken) for c in clients}

    test_views: dict[str, list[ChartView]] = {}
    level_cdfs: dict[str, list[pd.DataFrame]] = {c: [] for c in clients}
    frame = records.frame
    positions: dict[str, np.ndarray] = {}
    if "test_id" in frame:
        groups = frame.groupby("test_id", observed=True, sort=False).indices
        positions = {str(k): np.asarray(v) for k, v in groups.items()}
    for client in clients:
        client_tests = ch.client_tests({"tests": tests}, client)
        per_level = max(
            20, ch.MAX_LEVEL_POINTS // (len(ch.LATENCY_METRICS) * max(len(client_tests), 1))
        )
        for test in client_tests:
            test_id = str(test["test_id"])
            rows = frame.iloc[positions[test_id]] if test_id in positions else frame.iloc[0:0]
            gaps = records.itl.get(test_id)
            cdf = _cdf_for(rows, gaps)
            charts = ch.charts_for_test(summary, test, rows, metrics, cdf=cdf)
            anchor = test_anchors[test_id]
            test_views[test_id] = [files.view(anchor, n, c) for n, c in charts.items()]
            level = str(test.get("level_label") or "")
            level_cdfs[client].append(_cdf_for(rows, gaps, per_level).assign(level_label=level))

    client_views: dict[str, list[ChartView]] = {}
    for client in clients:
        levels = level_cdfs[client]
        client_cdf = pd.concat(levels, ignore_index=True) if levels else None
        charts = ch.charts_for_client({**summary, "tests": tests}, client, frame, cdf=client_cdf)
        anchor = client_anchors[client]
        client_views[client] = [files.view(anchor, n, c) for n, c in charts.items()]

    return render_report(
        {**summary, "tests": tests},
        client_views,
        test_views,
        test_anchors,
        client_anchors,
        problems=problems,
        previous=previous_section(run_root, summary, REPORT_NAME),
    )
