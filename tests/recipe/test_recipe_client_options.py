"""Each client kind's own recipe section, datasets of vectors, clients without a service."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_aifactory.cases import cases_for, process_specs
from pytest_aifactory.recipe import RecipeError, load_recipe
from tests.helpers import REPO


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return load_recipe(path, environ={})


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load(tmp_path, text)
    return [f"{p.line}: {p.key}: {p.message}" for p in caught.value.problems]


def test_sections_reach_the_client_job_as_plain_data(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "vectors.npy").write_bytes(b"")  # the recipe checks it exists
    recipe = load(
        tmp_path,
        """\
        name: t
        services:
          store: {kind: s3}
        clients:
          search:
            kind: vectordb
            dataset: {kind: file, path: data/vectors.npy, k: 5}
            vectordb: {index: ivf, nlist: 16, nprobe: 2}
            load: {levels: [2], requests: 10}
          objects:
            kind: s3
            service: store
          disk:
            kind: fio
            fio: {rw: randwrite, directory: scratch}
        """,
    )
    search = recipe.clients["search"]
    assert search.service is None
    assert search.dataset.path == str(tmp_path / "data" / "vectors.npy")
    assert recipe.clients["disk"].options()["directory"] == str(tmp_path / "scratch")
    # an omitted section is the kind's defaults
    assert recipe.clients["objects"].options()["mix"] == {"GET": 1.0}
    (case,) = cases_for(recipe, ("vectordb",))
    specs = process_specs(
        case,
        search,
        base_url="",
        model="",
        records_path=lambda i: tmp_path / f"p{i}.jsonl",
        progress_path=lambda i: tmp_path / f"p{i}.json",
        heartbeat_path=None,
        service_env={"TOKEN": "x"},
        service_kind="",
    )
    assert specs[0].options["index"] == "ivf"
    assert specs[0].options["nprobe"] == 2
    assert specs[0].dataset.k == 5
    assert specs[0].dataset.kind == "file"
    assert specs[0].service_env == {"TOKEN": "x"}


def test_mistakes_in_sections_name_the_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        name: t
        services:
          llm: {kind: llamacpp}
        clients:
          chat:
            kind: openai
          search:
            kind: vectordb
            vectordb: {index: annoy}
          objects:
            kind: s3
            service: llm
            s3: {mix: {POST: 1}}
            fio: {rw: read}
          vectors:
            kind: vectordb
            dataset: {kind: file}
        """,
    )
    text = "\n".join(found)
    assert "clients.chat.service: required for a client of kind 'openai'" in text
    assert "clients.search.vectordb.index" in text
    assert "'flat', 'hnsw' or 'ivf'" in text or "flat" in text
    assert "clients.objects.s3.mix" in text
    assert "clients.vectors.dataset.path" in text


def test_a_section_of_another_kind_is_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        name: t
        services:
          db: {kind: postgres}
        clients:
          tx:
            kind: sql
            service: db
            fio: {rw: read}
        """,
    )
    assert any("clients.tx.fio" in p and "kind 'fio'" in p for p in found), found


SHIPPED = sorted((REPO / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path, environ={})
    # every client can be turned into test cases and every SLO names a metric of its kind
    assert cases_for(recipe, tuple({c.kind for c in recipe.clients.values()}))


def test_connections_reach_openai_clients_and_only_them(tmp_path: Path) -> None:
    recipe = load(
        tmp_path,
        """\
        name: t
        services:
          llm: {kind: external, url: "http://127.0.0.1:9"}
        clients:
          pooled: {kind: openai, service: llm}
          fresh: {kind: openai, service: llm, load: {connections: per_request}}
        """,
    )
    expected = {"pooled": "pooled", "fresh": "per_request"}
    for case in cases_for(recipe):
        client = recipe.clients[case.client]
        specs = process_specs(
            case,
            client,
            base_url="http://127.0.0.1:9",
            model="m",
            records_path=lambda rank: tmp_path / f"p{rank}.jsonl",
            progress_path=lambda rank: tmp_path / f"p{rank}.json",
            heartbeat_path=None,
        )
        assert [spec.connections for spec in specs] == [expected[case.client]]

    found = problems(
        tmp_path,
        """\
        name: t
        services:
          store: {kind: s3}
        clients:
          objects: {kind: s3, service: store, load: {connections: per_request}}
          chat: {kind: openai, service: store, load: {connections: sometimes}}
        """,
    )
    assert any(
        "clients.objects.load.connections" in p and "applies to clients of kind 'openai'" in p
        for p in found
    ), found
    assert any(
        "clients.chat.load.connections" in p and "pooled" in p and "per_request" in p for p in found
    ), found
