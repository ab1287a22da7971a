"""The one table every collector produces: one row per sample of one series.

`metrics.parquet` at the root of a run is this table for every test window; the Prometheus
query path and the direct scraper both produce it, so readers need not know which ran.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

SAMPLE_COLUMNS: dict[str, Literal["string", "float64"]] = {
    "test_id": "string",
    "series": "string",
    "metric": "string",
    "source": "string",
    "service": "string",
    "node": "string",
    "instance": "string",
    "labels": "string",
    "timestamp": "float64",
    "value": "float64",
    "origin": "string",
}
"""`labels`: the sample's other labels as sorted JSON (`{"cpu": "0", "mode": "user"}`).
`origin`: `prometheus` or `scrape`. `timestamp`: epoch seconds."""


def empty_samples() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in SAMPLE_COLUMNS.items()})


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in the schema's order and types (missing ones empty)."""
    out = frame.copy()
    for name, dtype in SAMPLE_COLUMNS.items():
        if name not in out:
            out[name] = pd.Series([None] * len(out), dtype=dtype, index=out.index)
        out[name] = out[name].astype(dtype)
    return out[list(SAMPLE_COLUMNS)].reset_index(drop=True)
