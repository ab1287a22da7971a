"""What an `openai` client's requests carry beyond their prompt (sampling options, `extra_body`,
a weighted mix of models, embeddings batches), checked on the bodies a real server received."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.cases import cases_for, process_specs
from pytest_aifactory.loadgen.datasets import Prompt
from pytest_aifactory.loadgen.kinds import get_client_kind, headline_of
from pytest_aifactory.loadgen.openai import request_body
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec, LoadSpec
from pytest_aifactory.metrics.summaries import summarize
from pytest_aifactory.recipe import RecipeError, load_recipe
from pytest_aifactory.report.headline import headline_values
from pytest_aifactory.report.html_report import models_table
from pytest_aifactory.testing.load_specs import load_spec
from pytest_aifactory.testing.streaming_server import StreamingServer


@pytest.fixture
def server() -> Any:
    with StreamingServer(ttft_s=0.001, gap_s=0.0) as running:
        yield running


def make_spec(tmp_path: Path, url: str, **overrides: Any) -> LoadSpec:
    fields: dict[str, Any] = {
        "base_url": url,
        "model": "tiny",
        "requests": 4,
        "timeout_s": 5.0,
        "dataset": DatasetSpec(input_tokens=8, output_tokens=4),
        "seed": 11,
        **overrides,
    }
    return load_spec(tmp_path, **fields)


def run(spec: LoadSpec) -> pd.DataFrame:
    outcome = run_load(spec)
    assert outcome["sent"] == spec.requests
    return read_records([spec.records_path])


def load(tmp_path: Path, client: str) -> Any:
    path = tmp_path / "recipe.yaml"
    text = "name: t\nservices:\n  llm: {kind: external, url: 'http://127.0.0.1:1'}\nclients:\n"
    path.write_text(text + textwrap.indent(textwrap.dedent(client), "  "))
    return load_recipe(path, environ={})


def problems(tmp_path: Path, client: str) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load(tmp_path, client)
    return [f"{p.key}: {p.message}" for p in caught.value.problems]


# -- sampling options and extra_body -------------------------------------------------------------


SAMPLING = {
    "temperature": 0.7,
    "top_p": 0.9,
    "seed": 5,
    "min_tokens": 3,
    "extra_body": {"top_k": 20, "repetition_penalty": 1.1, "chat_template_kwargs": {"x": 1}},
}


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_options_arrive_exactly(tmp_path: Path, server: StreamingServer, api: str) -> None:
    records = run(make_spec(tmp_path, server.url, api=api, options=SAMPLING))
    assert (records["error"] == "").all(), records["error"].tolist()
    assert len(server.seen.bodies) == 4
    prompt_key = "messages" if api == "chat" else "prompt"
    for body in server.seen.bodies:
        assert body["temperature"] == 0.7
        assert body["top_p"] == 0.9
        assert body["seed"] == 5
        assert body["min_tokens"] == 3
        assert body["top_k"] == 20
        assert body["repetition_penalty"] == 1.1
        assert body["chat_template_kwargs"] == {"x": 1}
        # the client's own keys are still the client's
        assert body["model"] == "tiny"
        assert body["stream"] is True
        assert body["max_tokens"] == 4
        assert prompt_key in body
    assert set(records["model"]) == {"tiny"}


def test_without_options_requests_are_greedy_and_carry_nothing_else(
    tmp_path: Path, server: StreamingServer
) -> None:
    run(make_spec(tmp_path, server.url))
    for body in server.seen.bodies:
        assert body["temperature"] == 0
        assert not {"top_p", "seed", "min_tokens"} & set(body)


def test_extra_body_cannot_override_the_clients_keys(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "http://127.0.0.1:1", options={"extra_body": {"stream": False}})
    with pytest.raises(ValueError, match="'stream' is set by the client"):
        request_body(spec, Prompt("hello", 1, True))
    for key, owner in [
        ("stream", "the client"),
        ("max_tokens", "dataset.output_tokens"),
        ("model", "the client's `model`"),
        ("messages", "the dataset's prompts"),
        ("temperature", "openai.temperature"),
    ]:
        found = problems(
            tmp_path,
            f"""\
            chat:
              kind: openai
              service: llm
              openai: {{extra_body: {{top_k: 5, {key}: 1}}}}
            """,
        )
        assert len(found) == 1, found
        assert found[0].startswith("clients.chat.openai.extra_body: ")
        assert f"'{key}' is set by" in found[0]
        assert owner in found[0]


def test_options_follow_the_api(tmp_path: Path) -> None:
    (found,) = problems(
        tmp_path,
        """\
        emb:
          kind: openai
          service: llm
          api: embeddings
          openai: {top_p: 0.5}
        """,
    )
    assert found.startswith("clients.emb.openai.top_p: ")
    assert "completions or chat" in found
    (found,) = problems(
        tmp_path,
        """\
        chat:
          kind: openai
          service: llm
          openai: {batch_size: 8}
        """,
    )
    assert found.startswith("clients.chat.openai.batch_size: ")
    assert "embeddings" in found
    (found,) = problems(
        tmp_path,
        """\
        chat:
          kind: openai
          service: llm
          openai: {top_p: 1.5}
        """,
    )
    assert found.startswith("clients.chat.openai.top_p: ")
    # defaults written out (as a saved recipe holds them) are no problem
    recipe = load(
        tmp_path,
        """\
        emb:
          kind: openai
          service: llm
          api: embeddings
          openai: {temperature: 0.0, batch_size: 4}
        """,
    )
    assert recipe.clients["emb"].options()["batch_size"] == 4


# -- a weighted mix of models -------------------------------------------------------------------


MIX = (("big", 3.0), ("lora-a", 1.0))


def test_a_mix_keeps_its_proportions_and_repeats(tmp_path: Path, server: StreamingServer) -> None:
    requests = 400
    spec = make_spec(tmp_path / "one", server.url, models=MIX, requests=requests, level=8)
    records = run(spec)
    assert (records["error"] == "").all()
    # what the server received is what the records say, request by request
    ids = [{k.lower(): v for k, v in h.items()}["x-request-id"] for h in server.seen.headers]
    sent = {
        int(i.rsplit("-", 1)[1]): b["model"] for b, i in zip(server.seen.bodies, ids, strict=True)
    }
    assert sent == dict(zip(records["request_id"], records["model"], strict=True))
    share = (records["model"] == "big").mean()
    # within 4 standard deviations of the binomial count around the weights' 3/4
    tolerance = 4 * math.sqrt(0.75 * 0.25 / requests)
    assert abs(share - 0.75) <= tolerance, share
    assert set(records["model"]) == {"big", "lora-a"}
    # the same seed draws the same model for each request
    again = run(make_spec(tmp_path / "two", server.url, models=MIX, requests=requests, level=3))
    first = records.sort_values("request_id")["model"].tolist()
    assert again.sort_values("request_id")["model"].tolist() == first
    other = run(make_spec(tmp_path / "three", server.url, models=MIX, requests=requests, seed=12))
    assert other.sort_values("request_id")["model"].tolist() != first


def test_the_summary_has_figures_per_model(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.tokens = 4
    records = run(make_spec(tmp_path, server.url, models=MIX, requests=40, level=4))
    summary = summarize("openai", records)
    by_model = summary["by_model"]
    assert set(by_model) == {"big", "lora-a"}
    counts = {name: figures["counts"]["completed"] for name, figures in by_model.items()}
    assert counts == records["model"].value_counts().to_dict()
    assert sum(counts.values()) == summary["counts"]["completed"] == 40
    for figures in by_model.values():
        assert figures["ttft_ms"]["p50"] > 0
        assert figures["ttft_ms"]["p99"] >= figures["ttft_ms"]["p50"]
        assert figures["e2el_ms"]["p99"] >= figures["ttft_ms"]["p99"]
        assert figures["output_throughput"] > 0
    level = summary["per_level"]
    assert sum(f["output_throughput"] for f in by_model.values()) == pytest.approx(
        level["output_throughput"]
    )
    assert sum(f["request_throughput"] for f in by_model.values()) == pytest.approx(
        level["request_throughput"]
    )
    # the report's table of the models, read by the generation headline
    table = models_table({"kind": "openai", **summary})
    assert "<code>big</code>" in table
    assert "<code>lora-a</code>" in table
    assert "out tok/s" in table
    assert "TTFT p99 (ms)" in table
    # one model: no per-model figures
    single = run(make_spec(tmp_path / "single", server.url))
    assert "by_model" not in summarize("openai", single)
    assert models_table({"kind": "openai", **summarize("openai", single)}) == ""


def test_a_mix_in_the_recipe_reaches_the_load(tmp_path: Path) -> None:
    recipe = load(
        tmp_path,
        """\
        chat:
          kind: openai
          service: llm
          model: {big: 3, lora-a: 1}
        listed:
          kind: openai
          service: llm
          model: [{name: big, weight: 2}, {name: small}]
        """,
    )
    chat = recipe.clients["chat"]
    assert chat.model_mix == [("big", 3.0), ("lora-a", 1.0)]
    assert chat.model_name == "big"
    assert recipe.clients["listed"].model_mix == [("big", 2.0), ("small", 1.0)]
    case = cases_for(recipe)[0]
    (spec,) = process_specs(
        case,
        chat,
        base_url="http://127.0.0.1:1",
        model="big",
        records_path=lambda i: tmp_path / f"p{i}.jsonl",
        progress_path=lambda i: tmp_path / f"p{i}.json",
        heartbeat_path=str(tmp_path / "heartbeat"),
    )
    assert spec.models == (("big", 3.0), ("lora-a", 1.0))


def test_a_mix_is_validated(tmp_path: Path) -> None:
    (found,) = problems(
        tmp_path,
        """\
        chat:
          kind: openai
          service: llm
          model: [{name: a}, {name: a, weight: 2}]
        """,
    )
    assert found.startswith("clients.chat.model[1]: ")
    assert "already model[0]" in found
    (found,) = problems(
        tmp_path,
        """\
        chat:
          kind: openai
          service: llm
          model: {a: 0}
        """,
    )
    assert found.startswith("clients.chat.model")
    (found,) = problems(
        tmp_path,
        """\
        infer:
          kind: triton
          service: llm
          model: {a: 1, b: 1}
        """,
    )
    assert found.startswith("clients.infer.model: ")
    assert "kind 'openai'" in found


# -- embeddings ---------------------------------------------------------------------------------


def test_embeddings_batches_are_sent_and_timed(tmp_path: Path, server: StreamingServer) -> None:
    server.behaviour.ttft_s = 0.02
    options = {"batch_size": 4, "extra_body": {"dimensions": 8}}
    spec = make_spec(tmp_path, server.url, api="embeddings", options=options, requests=6)
    records = run(spec)
    assert (records["error"] == "").all(), records["error"].tolist()
    assert len(server.seen.bodies) == 6
    inputs = [text for body in server.seen.bodies for text in body["input"]]
    for body in server.seen.bodies:
        assert set(body) == {"model", "input", "encoding_format", "dimensions"}
        assert len(body["input"]) == 4
    assert len(set(inputs)) == len(inputs), "every input of the level is its own"
    assert (records["items"] == 4).all()
    assert (records["op"] == "embeddings").all()
    assert (records["latency_ms"] >= 20).all()
    assert records["ttft_ms"].isna().all()
    # the server's usage is the token count
    seen_tokens = sorted(
        sum(len(server.vocabulary.encode(t)) for t in body["input"]) for body in server.seen.bodies
    )
    assert sorted(records["input_tokens"].tolist()) == seen_tokens
    assert not records["tokens_estimated"].any()

    summary = summarize("openai", records)
    assert summary["api"] == "embeddings"
    level = summary["per_level"]
    assert level["embedding_throughput"] == pytest.approx(4 * level["request_throughput"])
    assert level["total_token_throughput"] == pytest.approx(sum(seen_tokens) / level["duration_s"])
    assert summary["per_request"]["latency_ms"]["p50"] >= 20
    assert "ttft_ms" not in summary["per_request"]
    head = headline_of("openai", "embeddings")
    assert (head.throughput, head.latency) == ("embedding_throughput", "latency_ms")
    values = headline_values({"kind": "openai", **summary})
    assert values["throughput"] == pytest.approx(level["embedding_throughput"])
    assert values["latency_p50"] == summary["per_request"]["latency_ms"]["p50"]
    assert get_client_kind("openai").headline_for(None).latency == "ttft_ms"


@pytest.mark.parametrize(
    ("fault", "error"),
    [("http500", "HTTPError: 500"), ("invalid_json", "EmbeddingError: invalid JSON"),
     ("empty", "EmbeddingError: 3 embeddings for 4 inputs")],
)  # fmt: skip
def test_embeddings_faults_end_as_records(
    tmp_path: Path, server: StreamingServer, fault: str, error: str
) -> None:
    server.behaviour.fault = fault
    options = {"batch_size": 4}
    records = run(make_spec(tmp_path, server.url, api="embeddings", options=options, requests=2))
    assert records["error"].str.startswith(error).all(), records["error"].tolist()
    summary = summarize("openai", records)
    assert summary["counts"]["failed"] == 2
    assert summary["per_level"]["embedding_throughput"] == 0


def test_embeddings_mix_has_figures_per_model(tmp_path: Path, server: StreamingServer) -> None:
    spec = make_spec(
        tmp_path, server.url, api="embeddings", models=MIX, requests=24, options={"batch_size": 2}
    )
    records = run(spec)
    summary = summarize("openai", records)
    by_model = summary["by_model"]
    assert set(by_model) == {"big", "lora-a"}
    assert sum(f["counts"]["completed"] for f in by_model.values()) == 24
    assert sum(f["embedding_throughput"] for f in by_model.values()) == pytest.approx(
        summary["per_level"]["embedding_throughput"]
    )
    table = models_table({"kind": "openai", **summary})
    assert "inputs/s" in table
    assert "latency p99 (ms)" in table
    assert sorted(b["model"] for b in server.seen.bodies) == sorted(records["model"])
