"""Relational transactions on PostgreSQL: pgbench's TPC-B-like transaction or point reads;
transactions/s and latency."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from pytest_aifactory.loadgen.kind import ClientKind, KindOptions
from pytest_aifactory.metrics.catalog import Headline, metric


class SqlOptions(KindOptions):
    """`tpcb`: pgbench's TPC-B-like transaction; `read-only`: a point SELECT by key (pgbench
    -S). `scale` as pgbench's: 100,000 accounts per unit."""

    mix: Literal["tpcb", "read-only"] = "tpcb"
    scale: PositiveInt = 1

    def level_seconds(self, load_s: float) -> float:
        """The tables are filled before the load: allow SETUP_S_PER_SCALE per unit of scale."""
        return load_s + self.scale * SETUP_S_PER_SCALE


SETUP_S_PER_SCALE = 2.0
"""pgbench fills about 100,000 accounts (one unit of scale) per second; twice that allowed."""


CLIENT_KIND = ClientKind(
    name="sql",
    description="runs pgbench-like transactions against PostgreSQL",
    load="pytest_aifactory.loadgen.sql:run_sql",
    summarize="pytest_aifactory.metrics.operations:summarize_operations",
    headline=Headline("tps", "tps", "latency_ms", "latency"),
    throughput_metric="tps",
    options=SqlOptions,
    metrics=(metric("tps", "tx/s", True, False, "sql", "transactions per second"),),
)
