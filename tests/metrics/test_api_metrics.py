"""An objective may name only what a client's summaries hold: for each `api` of the `openai`
kind, the metrics the recipe check allows are exactly those its real summaries report, so an
objective can neither be refused wrongly nor pass unjudged. Load from the real client against
the token-timing test server; summaries from the kind's own summarizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.loadgen.kinds import get_client_kind, metrics_for_client_kind
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.metrics.openai import summarize_openai
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer


def summary_of(tmp_path: Path, api: str) -> dict[str, Any]:
    with StreamingServer(ttft_s=0.0, gap_s=0.0) as server:
        spec = load_spec(
            tmp_path,
            base_url=server.url,
            model="m",
            api=api,
            requests=4,
            timeout_s=30.0,
            dataset=DatasetSpec(input_tokens=8, output_tokens=4),
        )
        outcome = run_load(spec)
    assert outcome["failed"] == 0
    records = read_records([spec.records_path])
    return summarize_openai(records, kind=get_client_kind("openai"))


@pytest.mark.parametrize("api", ["completions", "chat", "embeddings"])
def test_allowed_objectives_are_what_the_summary_reports(tmp_path: Path, api: str) -> None:
    summary = summary_of(tmp_path, api)
    reported = set(summary["per_request"]) | set(summary["per_level"])
    allowed = set(metrics_for_client_kind("openai", api))
    assert allowed - reported == set(), "allowed, never reported: could never be judged"
    declared = set(get_client_kind("openai").metric_names)
    assert (declared & reported) - allowed == set(), "reported, yet refused in an objective"
