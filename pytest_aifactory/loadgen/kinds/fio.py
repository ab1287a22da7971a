"""File storage measured by fio on the client's own file system: bandwidth, IOPS and
completion latency from fio's own figures."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator

from pytest_aifactory.loadgen.kind import ByteSize, ClientKind, KindOptions
from pytest_aifactory.metrics.catalog import Headline, metric


class FioOptions(KindOptions):
    """One fio job kind, run by every process of the client on its own files in `directory`.

    The load level is fio's iodepth. As for every kind a level is shared among the client's
    processes; in concurrency mode a process's share is the iodepth of each of its fio jobs, in
    rate mode its I/Os per second (fio's rate_iops, split over its `numjobs` jobs) with at most
    `rate_iodepth` in flight. Only asynchronous engines (libaio, io_uring) keep
    more than one I/O in flight, and with `direct: false` the page cache is measured as well.
    Each of the `numjobs` fio jobs of each process works on its own file of `size` bytes for
    `runtime_s` seconds after `ramp_time_s` unmeasured ones (with `time_based: false`, until
    the file was read or written once, if sooner). `directory` defaults to a private folder on
    the node's local disk ($TMPDIR or /tmp); fio's files are removed afterwards unless
    `keep_files`. `args`: further fio options, each `--name=value` (e.g. `--rwmixread=70`).
    The load's `requests`, `duration_s` and `warmup_requests` do not apply to fio.
    """

    rw: Literal["read", "write", "randread", "randwrite", "rw", "readwrite", "randrw"] = "randread"
    bs: ByteSize = "4k"
    size: ByteSize = "64M"
    runtime_s: PositiveFloat = 5.0
    ramp_time_s: NonNegativeFloat = 0.0
    time_based: bool = True
    numjobs: PositiveInt = 1
    ioengine: str | None = None
    """None: libaio where fio has it, else psync."""
    direct: bool = False
    directory: str | None = None
    keep_files: bool = False
    rate_iodepth: PositiveInt = 16
    args: list[str] = Field(default_factory=list)

    def level_seconds(self, load_s: float) -> float:
        """fio runs for its own ramp and runtime; the load's requests and duration do not
        apply. Laying out the files counts as start-up."""
        return self.ramp_time_s + self.runtime_s

    @field_validator("bs", "size")
    @classmethod
    def _fio_size(cls, value: str | int) -> str | int:
        if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
            raise ValueError(f"expected a positive size such as 4k or 1M, got {value!r}")
        if isinstance(value, str) and not all(_FIO_SIZE.fullmatch(p) for p in value.split(",")):
            raise ValueError(f"expected a size such as 4k, 64M or 1G, got {value!r}")
        return value

    @field_validator("ioengine")
    @classmethod
    def _engine(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_:./-]+", value):
            raise ValueError(f"expected an fio engine name such as libaio or psync, got {value!r}")
        return value

    @field_validator("args")
    @classmethod
    def _fio_args(cls, args: list[str]) -> list[str]:
        for arg in args:
            name = arg.split("=", 1)[0]
            if not name.startswith("--") or len(name) < 3:
                raise ValueError(f"expected fio options written --name=value, got {arg!r}")
            if name[2:] in FIO_RESERVED_OPTIONS:
                raise ValueError(
                    f"{name} is set by the fio client itself (use the fio section's keys)"
                )
        return args


_FIO_SIZE = re.compile(r"\d+(\.\d+)?\s*([kmgtpe](i?b)?|b)?", re.IGNORECASE)
FIO_RESERVED_OPTIONS: frozenset[str] = frozenset(
    {
        "name",
        "output",
        "output-format",
        "status-interval",
        "directory",
        "filename",
        "filename_format",
        "group_reporting",
        "create_only",
        "iodepth",
        "rate_iops",
        "rw",
        "readwrite",
        "numjobs",
    }
)
"""fio options the client sets itself: results, file names and the load level depend on them."""


CLIENT_KIND = ClientKind(
    name="fio",
    description="runs fio on the client node's file system",
    load="pytest_aifactory.loadgen.fio:fio_load",
    summarize="pytest_aifactory.metrics.fio:summarize_fio",
    headline=Headline("bw_mib_s", "MiB/s", "clat_ms", "clat"),
    throughput_metric="iops",
    options=FioOptions,
    needs_service=False,
    common_metrics=("error_rate", "achieved_rate", "latency_ms"),
    metrics=(
        metric("bw_mib_s", "MiB/s", True, False, "fio", "bandwidth"),
        metric("iops", "op/s", True, False, "fio", "I/O operations per second"),
        metric("clat_ms", "ms", False, True, "fio", "completion latency"),
    ),
)
