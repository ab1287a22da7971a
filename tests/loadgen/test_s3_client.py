"""The `s3` client against a real nanio server started from the `s3` kind's own plan.

The server runs exactly as a job runs the plan (its argv and env, placeholders filled) and is
stopped by its PID; the client runs in this process through `run_load`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.s3_objects import ObjectSet
from pytest_aifactory.metrics.operations import summarize_operations
from pytest_aifactory.recipe import Recipe
from pytest_aifactory.services.base import get_kind
from pytest_aifactory.services.kinds.s3 import SECRET_KEY_ENV
from pytest_aifactory.testing.load_specs import load_spec
from tests.helpers import running_plan

HOST = "127.0.0.1"


@dataclass
class Server:
    port: int
    client_env: dict[str, str]
    data_dir: Path


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One nanio server for the module, run as a job runs the plan."""
    document = Recipe.model_validate(
        {
            "name": "s3-test",
            "services": {"store": {"kind": "s3", "model": "nanio"}},
            "clients": {"c": {"kind": "s3", "service": "store"}},
        }
    )
    plan = get_kind("s3").plan("store", document.services["store"], document)
    with running_plan(plan, "nanio", host=HOST) as running:
        yield Server(running.port, plan.client_env, running.scratch)


def load(
    server: Server,
    tmp_path: Path,
    name: str,
    options: dict[str, Any],
    service_env: dict[str, str] | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """Run one load level in this process; its records."""
    level = settings.pop("level", 2)
    spec = load_spec(
        tmp_path,
        client=name,
        kind="s3",
        level=level,
        base_url=f"http://{HOST}:{server.port}",
        model="nanio",
        records_path=str(tmp_path / f"{name}.jsonl"),
        progress_path=str(tmp_path / f"{name}.progress.json"),
        options=options,
        service_env=service_env if service_env is not None else dict(server.client_env),
        service_kind="s3",
        timeout_s=30,
        **{"requests": 40, **settings},
    )
    outcome = run_load(spec)
    assert not outcome["interrupted"]
    return read_records([spec.records_path])


def measured(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["phase"] == "measure"].sort_values("request_id")


def test_mix_of_every_operation(server: Server, tmp_path: Path) -> None:
    options = {
        "mix": {"GET": 5, "PUT": 3, "LIST": 1, "DELETE": 1},
        "object_size": ["4k", "64k"],
        "objects": 6,
        "bucket": "mix",
        "list_max_keys": 4,
        "seed": 7,
    }
    records = load(server, tmp_path, "mix", options, requests=60, warmup_requests=2)
    rows = measured(records)
    assert len(rows) == 60
    assert (rows["error"] == "").all(), rows["error"].unique()
    assert set(rows["op"]) == {"GET", "PUT", "LIST", "DELETE"}
    gets = rows[rows["op"] == "GET"]
    assert set(gets["bytes"]) <= {4096, 65536}
    assert (gets["ttfb_ms"] > 0).all()
    assert (gets["ttfb_ms"] <= gets["latency_ms"]).all()
    assert set(rows.loc[rows["op"] == "LIST", "items"]) == {4}
    assert set(rows.loc[rows["op"] == "PUT", "bytes"]) <= {4096, 65536}
    assert rows.loc[rows["op"] != "GET", "ttfb_ms"].isna().all()
    assert set(rows["http_status"]) <= {200, 204}
    setup = records[records["phase"] == "setup"]
    assert setup["op"].iloc[0] == "CreateBucket"
    assert (setup["request_id"] < 0).all()
    assert (setup["op"] == "PUT").sum() == 6  # the GETs' objects, written once
    # what is on disk is what the client says it wrote
    objects = ObjectSet(seed=7, count=6, sizes=[4096, 65536])
    stored = server.data_dir / "mix" / objects.objects[1].key
    assert stored.read_bytes() == objects.payload(1).data

    summary = summarize_operations(records, "s3")
    assert summary["per_level"]["ops_s"] > 0
    assert summary["per_level"]["throughput_mib_s"] > 0
    assert set(summary["by_op"]) == {"GET", "PUT", "LIST", "DELETE"}
    assert summary["by_op"]["GET"]["ttfb_ms"]["p50"] > 0

    # the same seed draws the same operations; the objects are found in place this time
    again = load(server, tmp_path, "mix-again", options, requests=60, warmup_requests=2)
    assert list(measured(again)["op"]) == list(rows["op"])
    assert "PUT" not in set(again.loc[again["phase"] == "setup", "op"])
    other = load(server, tmp_path, "mix-other", {**options, "seed": 8}, requests=60)
    assert list(measured(other)["op"]) != list(rows["op"])


def test_object_corrupted_on_disk_is_an_error(server: Server, tmp_path: Path) -> None:
    options = {"object_size": "16k", "objects": 1, "bucket": "corrupt"}
    first = measured(load(server, tmp_path, "before", options, requests=4))
    assert (first["error"] == "").all()
    (key,) = [o.key for o in ObjectSet(seed=0, count=1, sizes=[16384]).objects]
    path = server.data_dir / "corrupt" / key
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # one byte, same length: the server's own metadata still looks right
    path.write_bytes(bytes(data))

    records = load(server, tmp_path, "after", options, requests=8)
    rows = measured(records)
    assert len(rows) == 8
    assert rows["error"].str.startswith(f"ChecksumMismatch: GET {key}: 16384 bytes").all()
    assert (rows["http_status"] == 200).all()
    assert summarize_operations(records, "s3")["per_level"]["error_rate"] == 1.0
    # the object was not rewritten behind the check: setup found it "in place"
    assert "PUT" not in set(records.loc[records["phase"] == "setup", "op"])


def test_wrong_credentials_are_refused(server: Server, tmp_path: Path) -> None:
    wrong = {**server.client_env, SECRET_KEY_ENV: "0" * 40}
    options = {"mix": {"GET": 1, "PUT": 1}, "object_size": "4k", "objects": 2, "bucket": "denied"}
    records = load(server, tmp_path, "denied", options, service_env=wrong, requests=10)
    rows = measured(records)
    assert len(rows) == 10
    assert (rows["http_status"] == 403).all()
    assert rows["error"].str.startswith("HTTPError: 403").all()
    assert rows["error"].str.contains("SignatureDoesNotMatch").all()
    setup = records[records["phase"] == "setup"]
    assert list(setup["op"]) == ["CreateBucket"]  # nothing else tried once refused
    assert setup["error"].iloc[0].startswith("HTTPError: 403")
    assert not (server.data_dir / "denied").exists()
