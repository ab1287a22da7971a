"""The prompt-length probe sends the run's key, as every request does.

A keyed server (every llama-server and vLLM a run starts is keyed) refuses /tokenize without
it; the client used to fall back to word prompts of guessed length without a word. Now the
probe sends the key and the prompts are exact; a refused key stops the load with the reason; a
server without a tokenizer still gets word prompts, and the load says so once. Each record says
whether its prompt's length was counted by the server (`prompt_tokens_exact`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.cluster.local import LocalJobExecutor
from pytest_aifactory.cluster.rundir import RunDir, make_run_id
from pytest_aifactory.endpoints import Endpoint
from pytest_aifactory.loadgen.datasets import TokenizerRefused
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.stats import summarize_llm
from pytest_aifactory.services.base import API_KEY_SETTING
from pytest_aifactory.services.manager import ServiceManager
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer
from tests.factories import recipe

KEY = "probe-key-0123456789abcdef0123456789"
INPUT_TOKENS = 24


def spec_for(tmp_path: Path, url: str, **overrides: Any) -> LoadSpec:
    values: dict[str, Any] = {
        "base_url": url,
        "model": "m",
        "requests": 4,
        "timeout_s": 60.0,
        "dataset": DatasetSpec(input_tokens=INPUT_TOKENS, output_tokens=4),
    }
    return load_spec(tmp_path, **{**values, **overrides})


def records_of(spec: LoadSpec) -> pd.DataFrame:
    records = read_records([spec.records_path])
    return records[records["phase"] == "measure"].reset_index(drop=True)


@pytest.fixture
def keyed_server() -> Iterator[StreamingServer]:
    with StreamingServer(ttft_s=0.0, gap_s=0.0, api_key=KEY) as server:
        yield server


def test_the_probe_sends_the_key(tmp_path: Path, keyed_server: StreamingServer) -> None:
    spec = spec_for(tmp_path, keyed_server.url, api_key=KEY)
    outcome = run_load(spec)
    records = records_of(spec)
    assert outcome["failed"] == 0, records["error"].tolist()
    assert keyed_server.seen.refused == 0
    assert records["prompt_tokens_exact"].all()
    assert (records["input_tokens"] == INPUT_TOKENS).all()
    assert summarize_llm(records)["prompt_tokens_exact"] is True


@pytest.mark.parametrize("key", [None, "not-the-key"])
def test_a_refused_probe_stops_the_load(
    tmp_path: Path, keyed_server: StreamingServer, key: str | None
) -> None:
    """Word prompts of a guessed length would hide the wrong key until every request failed."""
    spec = spec_for(tmp_path, keyed_server.url, api_key=key)
    with pytest.raises(TokenizerRefused, match=r"POST /tokenize answered 401 .*API key"):
        run_load(spec)
    assert keyed_server.seen.bodies == [], "no request was sent"


def test_a_server_without_a_tokenizer_gets_estimates_said_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with StreamingServer(ttft_s=0.0, gap_s=0.0, tokenizer=None) as server:
        spec = spec_for(tmp_path, server.url)
        outcome = run_load(spec)
    records = records_of(spec)
    assert outcome["failed"] == 0
    assert not records["prompt_tokens_exact"].any()
    assert summarize_llm(records)["prompt_tokens_exact"] is False
    err = capfd.readouterr().err
    assert err.count("prompts are random words of estimated length") == 1, err
    assert "no /tokenize and /detokenize endpoints" in err


# -- against the real llama-server --------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """llama-server locked with the run's key, as a run starts it."""
    tmp = tmp_path_factory.mktemp("keyed")
    run = RunDir.create(tmp / "reports", make_run_id("keyed"))
    run.start_heartbeat()  # the service job watches it, as under a session
    services = ServiceManager(
        recipe(name="keyed", service={"args": ["--parallel", "2"]}),
        run,
        LocalJobExecutor(run),
    )
    try:
        yield services.endpoint("llm")
    finally:
        services.stop_all()
        run.stop_heartbeat()


@pytest.mark.slow
@pytest.mark.requires("llama-server")
def test_llama_server_gets_exact_prompts_with_the_key(tmp_path: Path, llama: Endpoint) -> None:
    key = llama.client_env[API_KEY_SETTING]
    spec = spec_for(tmp_path, llama.url, model="smollm2-135m", api_key=key, requests=6, level=2)
    outcome = run_load(spec)
    records = records_of(spec)
    assert outcome["failed"] == 0, records["error"].tolist()
    # counted by the server's tokenizer, and what the server then received (its usage)
    assert records["prompt_tokens_exact"].all()
    assert not records["tokens_estimated"].any()
    assert (records["input_tokens"] == INPUT_TOKENS).all(), records["input_tokens"].tolist()


@pytest.mark.slow
@pytest.mark.requires("llama-server")
def test_llama_server_refuses_the_probe_without_the_key(tmp_path: Path, llama: Endpoint) -> None:
    spec = spec_for(tmp_path, llama.url, model="smollm2-135m", api_key=None)
    with pytest.raises(TokenizerRefused, match="POST /tokenize answered 401"):
        run_load(spec)


def test_the_probe_survives_a_server_closing_kept_alive_connections(tmp_path: Path) -> None:
    """llama.cpp's server closes a kept-alive connection after a few requests; a probe that
    reused pooled connections met a closed one and fell back to word prompts of guessed length.
    This server closes every connection at its second request."""
    with StreamingServer(ttft_s=0.0, gap_s=0.0) as server:
        server.behaviour.close_on_reuse = True
        spec = spec_for(tmp_path, server.url, requests=8)
        outcome = run_load(spec)
    records = records_of(spec)
    assert outcome["failed"] == 0, records["error"].tolist()
    assert records["prompt_tokens_exact"].all()
    assert (records["input_tokens"] == INPUT_TOKENS).all()
