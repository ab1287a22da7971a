"""Object storage over the S3 API: a seeded mix of GET, PUT, LIST and DELETE, every GET's
checksum verified; operations/s, MiB/s, latency and time to first byte."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, PositiveInt, field_validator

from pytest_aifactory.loadgen.kind import ByteSize, ClientKind, KindOptions
from pytest_aifactory.loadgen.s3_objects import parse_sizes
from pytest_aifactory.metrics.catalog import Headline, metric

S3Op = Literal["PUT", "GET", "LIST", "DELETE"]


def _default_mix() -> dict[S3Op, float]:
    return {"GET": 1.0}


class S3Options(KindOptions):
    """The operation mix and the objects. `mix`: relative weights of GET, PUT, LIST and
    DELETE; each request is one operation drawn from it with a generator seeded by `seed`.
    GETs read `objects` objects, made before the measurement with contents fixed by `seed`
    and checked on every read; their sizes are `object_size` (one size, or a list taken in
    turn). PUTs write objects of the same sizes under keys of their own process, DELETEs
    remove those; LISTs list `list_max_keys` keys of the GETs' objects. `bucket` is created
    when missing. `region`: the signing region when the service does not say it."""

    mix: dict[S3Op, NonNegativeFloat] = Field(default_factory=_default_mix)
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


CLIENT_KIND = ClientKind(
    name="s3",
    description="sends a mix of S3 operations to an object store",
    load="pytest_aifactory.loadgen.s3:run_s3",
    summarize="pytest_aifactory.metrics.operations:summarize_operations",
    headline=Headline("throughput_mib_s", "MiB/s", "latency_ms", "latency"),
    throughput_metric="ops_s",
    options=S3Options,
    metrics=(
        metric("throughput_mib_s", "MiB/s", True, False, "s3", "bytes moved per second"),
        metric("ops_s", "op/s", True, False, "s3", "operations per second"),
        metric(
            "ttfb_ms", "ms", False, True, "s3", "GET time to first byte", "Time to first byte (ms)"
        ),
    ),
)  # fmt: skip
