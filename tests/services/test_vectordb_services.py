"""The chroma and milvus service kinds: their commands, health checks, and recipes refused
before anything starts. (That the servers really start, answer and stop is in
test_vectordb_e2e.py.)"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from pytest_aifactory.recipe import Recipe, RecipeError, load_recipe
from pytest_aifactory.services.base import ServiceConfigError, get_kind

BIN = Path(sys.executable).parent


def recipe(tmp_path: Path, text: str) -> Recipe:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return load_recipe(path, environ={})


SERVED = """\
    name: t
    services:
      chroma: {kind: chroma, args: ["--log-config", "x"]}
      milvus: {kind: milvus, port: 19999}
    clients:
      a:
        kind: vectordb
        service: chroma
      b:
        kind: vectordb
        service: milvus
        vectordb: {index: ivf}
    """


@pytest.mark.requires("chromadb")
def test_chroma_plan(tmp_path: Path) -> None:
    document = recipe(tmp_path, SERVED)
    plan = get_kind("chroma").plan("chroma", document.services["chroma"], document)
    assert plan.argv == [
        str(BIN / "chroma"),
        "run",
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--path",
        "{scratch}",
        "--log-config",
        "x",
    ]
    assert plan.health.http_path == "/api/v2/heartbeat"
    assert plan.metrics_path is None
    assert plan.port is None
    assert plan.host == "127.0.0.1"


@pytest.mark.requires("milvus-lite")
def test_milvus_plan(tmp_path: Path) -> None:
    document = recipe(tmp_path, SERVED)
    plan = get_kind("milvus").plan("milvus", document.services["milvus"], document)
    assert plan.argv[:2] == [str(BIN / "milvus-lite"), "server"]
    assert plan.argv[2:] == ["--data-dir", "{scratch}", "--host", "{host}", "--port", "{port}"]
    assert plan.health.http_path is None  # gRPC: a TCP connect
    assert plan.port == 19999


@pytest.mark.parametrize(("kind", "package"), [("chroma", "chromadb"), ("milvus", "milvus-lite")])
def test_a_missing_server_names_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, package: str
) -> None:
    document = recipe(tmp_path, SERVED)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ServiceConfigError, match=f"pip install {package}") as caught:
        get_kind(kind).plan(kind, document.services[kind], document)
    assert f"service '{kind}'" in str(caught.value)


def test_chroma_refuses_indexes_it_lacks(tmp_path: Path) -> None:
    document = recipe(
        tmp_path,
        """\
        name: t
        services:
          store: {kind: chroma}
        clients:
          exact:
            kind: vectordb
            service: store
            vectordb: {index: flat}
        """,
    )
    with pytest.raises(ServiceConfigError, match=r"client 'exact': chroma .* has no 'flat' index"):
        get_kind("chroma").plan("store", document.services["store"], document)


def test_an_engine_that_is_not_the_service_is_refused(tmp_path: Path) -> None:
    document = recipe(
        tmp_path,
        """\
        name: t
        services:
          store: {kind: milvus}
        clients:
          search:
            kind: vectordb
            service: store
            vectordb: {engine: chroma}
        """,
    )
    with pytest.raises(ServiceConfigError, match="engine is 'chroma' but its service 'store'"):
        get_kind("milvus").plan("store", document.services["store"], document)


def test_option_mistakes_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as caught:
        recipe(
            tmp_path,
            """\
            name: t
            clients:
              search:
                kind: vectordb
                vectordb: {engine: qdrant, collection: "bad name", nlist: 4, nprobe: 8, threads: 0}
            """,
        )
    text = "\n".join(str(p) for p in caught.value.problems)
    assert "clients.search.vectordb.engine" in text
    assert "clients.search.vectordb.collection" in text
    assert "nprobe (8) cannot exceed nlist (4)" in text
    assert "clients.search.vectordb.threads" in text


def test_a_faiss_client_needs_no_service(tmp_path: Path) -> None:
    document = recipe(
        tmp_path,
        """\
        name: t
        clients:
          search:
            kind: vectordb
            dataset: {kind: clustered, dim: 8, count: 100, clusters: 4}
        """,
    )
    options = document.clients["search"].options()
    assert options["engine"] is None
    assert options["index"] == "hnsw"
    assert options["threads"] == 1
