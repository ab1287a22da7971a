"""The `s3` service kind's plan, the `s3:` recipe section and the client's object bookkeeping."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_aifactory.loadgen.s3_objects import (
    ObjectSet,
    SlotPool,
    content,
    parse_size,
    parse_sizes,
    put_payloads,
)
from pytest_aifactory.recipe import Recipe, RecipeError, load_recipe
from pytest_aifactory.redact import Redactor, looks_secret, secrets_from_env
from pytest_aifactory.services.base import ServiceConfigError, ServicePlan, get_kind
from pytest_aifactory.services.kinds.s3 import ACCESS_KEY_ENV, MINIO_ENV, SECRET_KEY_ENV
from tests.helpers import REPO, write_recipe


def recipe(service: dict[str, Any] | None = None) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "s3-test",
            "services": {"store": {"kind": "s3", **(service or {})}},
            "clients": {"c": {"kind": "s3", "service": "store"}},
        }
    )


def plan_of(service: dict[str, Any] | None = None) -> ServicePlan:
    document = recipe(service)
    return get_kind("s3").plan("store", document.services["store"], document)


@pytest.fixture
def no_minio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH with nothing but Python's own folder: no minio binary to be found."""
    monkeypatch.delenv(MINIO_ENV, raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def fake_minio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An executable named `minio` on PATH: only the command built for it is checked."""
    monkeypatch.delenv(MINIO_ENV, raising=False)
    folder = tmp_path / "bin"
    folder.mkdir()
    binary = folder / "minio"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return binary


# -- the plan -----------------------------------------------------------------------------------


def test_nanio_without_minio_with_keys_made_per_run(no_minio: None) -> None:
    first, second = plan_of(), plan_of()
    access, secret = first.client_env[ACCESS_KEY_ENV], first.client_env[SECRET_KEY_ENV]
    assert len(access) >= 8
    assert len(secret) >= 32
    assert secret != second.client_env[SECRET_KEY_ENV]
    assert access != second.client_env[ACCESS_KEY_ENV]
    assert first.served_model == "nanio"
    assert first.argv[1:4] == ["-m", "nanio", "serve"]
    assert {"{scratch}", "{host}", "{port}"} <= set(first.argv)
    assert first.env["NANIO_ACCESS_KEY"] == access
    assert first.env["NANIO_SECRET_KEY"] == secret
    assert not any(secret in arg or access in arg for arg in first.argv)
    assert first.health.http_path is None  # nanio has no health path: a TCP connect
    assert first.metrics_path is None


def test_every_variable_holding_a_key_is_hidden_from_logs(no_minio: None) -> None:
    plan = plan_of()
    secret = plan.client_env[SECRET_KEY_ENV]
    access = plan.client_env[ACCESS_KEY_ENV]
    for env in (plan.env, plan.client_env):
        for name, value in env.items():
            if value in (secret, access):
                assert looks_secret(name), name
    redactor = Redactor([*secrets_from_env(plan.env), *secrets_from_env(plan.client_env)])
    line = f"starting with {access} and {secret}"
    assert redactor.text(line) == "starting with *** and ***"


def test_minio_when_its_binary_is_on_path(fake_minio: Path) -> None:
    plan = plan_of({"args": ["--console-address", ":9101"]})
    assert plan.argv[:3] == [str(fake_minio), "server", "{scratch}"]
    assert plan.argv[plan.argv.index("--address") + 1] == "{host}:{port}"
    assert "--anonymous" in plan.argv
    assert plan.argv[-2:] == ["--console-address", ":9101"]
    assert plan.env["MINIO_ROOT_USER"] == plan.client_env[ACCESS_KEY_ENV]
    assert plan.env["MINIO_ROOT_PASSWORD"] == plan.client_env[SECRET_KEY_ENV]
    assert plan.health.http_path == "/minio/health/live"
    assert plan.metrics_path == "/minio/v2/metrics/cluster"
    assert plan.env["MINIO_PROMETHEUS_AUTH_TYPE"] == "jwt"  # metrics only to a token
    assert plan.served_model == "minio"


def test_model_forces_the_server(fake_minio: Path) -> None:
    assert plan_of({"model": "nanio"}).served_model == "nanio"
    assert plan_of({"model": str(fake_minio)}).argv[0] == str(fake_minio)


def test_minio_asked_for_but_missing(no_minio: None, tmp_path: Path) -> None:
    with pytest.raises(ServiceConfigError, match="model 'minio' but no minio binary found"):
        plan_of({"model": "minio"})
    not_executable = tmp_path / "minio"
    not_executable.write_text("")
    with pytest.raises(ServiceConfigError) as caught:
        plan_of({"model": str(not_executable)})
    assert "service 'store': model" in str(caught.value)
    assert "not an executable minio binary" in str(caught.value)


def test_one_node_only(no_minio: None) -> None:
    with pytest.raises(ServiceConfigError, match="runs on one node"):
        plan_of({"nodes": 2})


# -- the recipe section -------------------------------------------------------------------------


def test_bad_section_names_every_key(tmp_path: Path) -> None:
    document = {
        "name": "bad-s3",
        "services": {"store": {"kind": "s3"}},
        "clients": {
            "c": {
                "kind": "s3",
                "service": "store",
                "s3": {
                    "mix": {"GET": 1, "PUTS": 1},
                    "object_size": ["4k", "1 ZB"],
                    "bucket": "Under_Score",
                    "list_max_keys": 5000,
                },
            },
            "d": {"kind": "s3", "service": "store", "s3": {"mix": {"GET": 0}}},
        },
    }
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path / "bad.yaml", document))
    text = str(caught.value)
    for key in (
        "clients.c.s3.mix.PUTS",
        "clients.c.s3.object_size",
        "clients.c.s3.bucket",
        "clients.c.s3.list_max_keys",
        "clients.d.s3.mix",
    ):
        assert key in text, text
    assert "did you mean 'PUT'" in text


def test_recipe_in_the_repository_is_valid() -> None:
    loaded = load_recipe(REPO / "recipes" / "s3.yaml")
    assert {c.kind for c in loaded.clients.values()} == {"s3"}


# -- objects ------------------------------------------------------------------------------------


def test_sizes() -> None:
    assert parse_size(512) == 512
    assert parse_size("4k") == 4096
    assert parse_size("1M") == parse_size("1MiB") == 1024**2
    assert parse_size("1.5k") == 1536
    assert parse_sizes(["4k", 10]) == [4096, 10]
    cases = {"0": "at least 1 byte", "12 parsecs": "expected bytes", "2G": "at most 1G"}
    for bad, why in cases.items():
        with pytest.raises(ValueError, match=why):
            parse_size(bad)
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(True)


def test_contents_follow_seed_and_key_only() -> None:
    assert content(0, "a", 100) == content(0, "a", 100)
    assert content(0, "a", 100) != content(1, "a", 100)
    assert content(0, "a", 100) != content(0, "b", 100)
    objects = ObjectSet(seed=3, count=4, sizes=[10, 20])
    assert [o.size for o in objects.objects] == [10, 20, 10, 20]
    assert all(o.key.startswith(objects.prefix) for o in objects.objects)
    assert ObjectSet(seed=4, count=1, sizes=[10]).prefix != objects.prefix
    assert objects.payload(1).md5_hex == ObjectSet(3, 4, [10, 20]).payload(1).md5_hex
    assert len({p.md5_hex for p in put_payloads(0, [10, 20])}) == 8


def test_slots_never_shared_and_reused() -> None:
    pool = SlotPool("p/")
    a, b = pool.for_put(), pool.for_put()
    assert a != b  # both in flight
    assert pool.for_delete() == (2, False)  # nothing written yet: an empty slot of its own
    pool.release(a, written=True)
    assert pool.for_delete() == (a, True)
    pool.release(a, written=False)
    pool.release(b, written=True)
    pool.release(2, written=False)
    assert pool.for_put() == a  # an empty slot before overwriting a written one
    assert pool.for_put() == 2
    assert pool.for_put() == b
    assert pool.key(7) == "p/000007"
