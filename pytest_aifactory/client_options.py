"""Each client kind's own recipe section (`vectordb:`, `s3:`, `sql:`, `fio:`, `triton:`).

A section is validated here with the rest of the recipe, so a typo stops the session before any
job starts; the client job receives it as plain data (`LoadSpec.options`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


ByteSize = Annotated[str | int, Field(examples=["4k", "1M", 1048576])]
"""A size as fio and S3 users write it: bytes, or a number with k, M, G (powers of 1024)."""


class VectorDbOptions(_Options):
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


class S3Options(_Options):
    """The operation mix and the objects. `mix`: relative weights of GET, PUT, LIST and
    DELETE; each request is one operation drawn from it with a generator seeded by `seed`.
    GETs read `objects` objects, made before the measurement with contents fixed by `seed`
    and checked on every read; their sizes are `object_size` (one size, or a list taken in
    turn). PUTs write objects of the same sizes under keys of their own process, DELETEs
    remove those; LISTs list `list_max_keys` keys of the GETs' objects. `bucket` is created
    when missing. `region`: the signing region when the service does not say it."""

    mix: dict[Literal["PUT", "GET", "LIST", "DELETE"], NonNegativeFloat] = Field(
        default_factory=lambda: {"GET": 1.0}
    )
    object_size: ByteSize | list[ByteSize] = "1M"
    objects: PositiveInt = 32
    bucket: str = "aifactory-bench"
    list_max_keys: Annotated[int, Field(ge=1, le=1000)] = 100
    seed: int = 0
    region: str | None = None

    @field_validator("mix")
    @classmethod
    def _s3_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        if not any(weight > 0 for weight in mix.values()):
            raise ValueError("expected at least one operation with a positive weight")
        return mix

    @field_validator("object_size")
    @classmethod
    def _s3_sizes(cls, value: str | int | list[str | int]) -> str | int | list[str | int]:
        from pytest_aifactory.loadgen.s3_objects import parse_sizes

        parse_sizes(value)
        return value

    @field_validator("bucket")
    @classmethod
    def _s3_bucket(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value) or ".." in value:
            raise ValueError(
                "expected an S3 bucket name: 3-63 lower-case letters, digits, '-' and '.', "
                f"starting and ending with a letter or digit, got {value!r}"
            )
        return value


class SqlOptions(_Options):
    """`tpcb`: pgbench's TPC-B-like transaction; `read-only`: a point SELECT by key (pgbench
    -S). `scale` as pgbench's: 100,000 accounts per unit."""

    mix: Literal["tpcb", "read-only"] = "tpcb"
    scale: PositiveInt = 1


class FioOptions(_Options):
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


TritonDatatype = Literal[
    "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
    "FP16", "FP32", "FP64",
]  # fmt: skip


class TritonOptions(_Options):
    """How each inference is sent to the client's `model` (default: the one model the service
    serves). `protocol`: http, or grpc on the service's port + 1 (Triton's 8000/8001 layout).
    Each request carries `batch_size` items; every input of the model gets random values of
    `dtype` in `shape` per item (without the batch dimension). Left out, both come from the
    model's own description, a variable dimension taken as 16."""

    protocol: Literal["http", "grpc"] = "http"
    model_version: str = ""
    """A version number; empty: the server's choice (the latest)."""
    batch_size: PositiveInt = 1
    shape: list[PositiveInt] | None = None
    dtype: TritonDatatype | None = None


OPTIONS_BY_KIND: dict[str, type[_Options]] = {
    "vectordb": VectorDbOptions,
    "s3": S3Options,
    "sql": SqlOptions,
    "fio": FioOptions,
    "triton": TritonOptions,
}
"""The section each client kind reads; the section's key in a recipe is the kind's name."""

CLIENT_KINDS_WITHOUT_SERVICE: frozenset[str] = frozenset({"vectordb", "fio"})
"""Kinds that may run with no service: FAISS searches inside the client job, fio measures the
file system the job runs on."""
